//! Userspace data plane tests in network namespaces with a real etcd: ping and byte-identical transfers
//! between containers on different hosts, for vxlan and udp.

mod common;

use std::time::Duration;

use common::netns::Bed;

const T: Duration = Duration::from_secs(20);

fn config(backend: &str) -> String {
    format!(r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{backend}"}}}}"#)
}

fn three_hosts_all_pairs_and_a_50mb_transfer(backend: &str) {
    let mut bed = Bed::new(3, &config(backend));
    for i in 0..3 {
        bed.start_weft(i, &["--workers=2"]);
    }
    let ips: Vec<_> = (0..3).map(|i| bed.attach_container(i)).collect();
    for from in 0..3 {
        for (to, ip) in ips.iter().enumerate() {
            if from != to {
                bed.wait_ping(from, *ip, T);
            }
        }
    }
    let (sent, got) = bed.transfer(0, 2, 50 << 20);
    assert_eq!(got.1, 50 << 20, "all bytes arrived");
    assert_eq!(sent, got, "byte-identical");
    let tx = bed
        .weft(0)
        .metric("weft_packets_total{direction=\"tx\"}")
        .unwrap();
    let rx = bed
        .weft(2)
        .metric("weft_packets_total{direction=\"rx\"}")
        .unwrap();
    assert!(
        tx > 1000 && rx > 1000,
        "the data went through weft: tx {tx}, rx {rx}"
    );
}

#[test]
fn vxlan_three_hosts() {
    three_hosts_all_pairs_and_a_50mb_transfer("vxlan");
}

#[test]
fn udp_three_hosts() {
    three_hosts_all_pairs_and_a_50mb_transfer("udp");
}
