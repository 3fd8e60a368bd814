//! KubeEdge's edgecore.yaml and cloudcore.yaml as kubeedge-config reads them (hostile: a damaged,
//! truncated or hand-written file): decoding and validating never panic; an edgecore.yaml that
//! decodes writes back to YAML that decodes to the same file; a cloudcore.yaml that decodes
//! either applies to the settings or names what is wrong. The first byte picks the file.
#![no_main]

use kubeedge_config::cloudcore::{CloudCoreConfig, Settings};
use kubeedge_config::edgecore::EdgeCoreFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(file) = EdgeCoreFile::parse(text) {
            let _ = file.check();
            let _ = file.node_name();
            let _ = file.cloud_host();
            let _ = file.internal_broker();
            let _ = file.dmi_socket();
            let yaml = file.to_yaml().expect("a decoded file encodes");
            let again = EdgeCoreFile::parse(&yaml).expect("an encoded file decodes");
            assert_eq!(again, file, "edgecore.yaml round trip");
        }
    } else if let Ok(file) = CloudCoreConfig::from_yaml(text) {
        let mut settings = Settings::default();
        let _ = settings.apply_file(&file);
    }
});
