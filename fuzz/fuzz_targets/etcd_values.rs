//! Fuzzes the parsers of what other hosts write to etcd: lease values and keys, network configs, subnet.env.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = weft::control::lease::LeaseAttrs::from_json(data) {
        let _ = a.vxlan_data();
        let _ = weft::control::lease::LeaseAttrs::from_json(a.to_json().as_bytes())
            .expect("our own JSON parses");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weft::control::lease::parse_subnet_key(text);
        if let Ok(cfg) = weft::control::config::NetworkConfig::parse(text) {
            assert!(cfg.ipv4.is_some() || cfg.ipv6.is_some());
            if let Some(c4) = cfg.ipv4 {
                assert!(c4.subnet_count() >= 1);
            }
            if let Some(c6) = cfg.ipv6 {
                assert!(c6.subnet_count() >= 1);
            }
        }
        let _ = weft::control::subnet_env::SubnetEnv::parse(text);
    }
});
