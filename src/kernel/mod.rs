//! The kernel VXLAN backend: the desired `flannel.<VNI>` device, neighbours, FDB entries and routes computed from
//! the route table (pure, `state`), and the netlink reconciler that applies them (`vxlan`).

pub mod state;
pub mod vxlan;
