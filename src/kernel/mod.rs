//! Backends programmed into the kernel over netlink: the kernel VXLAN backend (the desired `flannel.<VNI>`
//! device, neighbours, FDB entries and routes computed from the route table, pure, `state`, and the
//! reconciler that applies them, `vxlan`), and direct routes for host-gw and vxlan's DirectRouting (pure
//! plan `direct_state`, reconciler `direct`).

pub mod direct;
pub mod direct_state;
pub mod state;
pub mod vxlan;
