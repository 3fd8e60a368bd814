//! What a cloud answers an edge, and what a cloud keeps about an edge (hostile: any bytes a
//! cloud, or whoever can write the record ConfigMap, can produce): reading a reply of any
//! shape, a service-account token answer and request, the extensions header, and a sent
//! record never panic; a sent record renders to text that parses back to itself.
#![no_main]

use kubeedge_cloud::SentRecord;
use kubeedge_proto::extensions::Extensions;
use kubeedge_proto::{Content, ObjectResp};
use kubeedge_store::tokens::{IssuedToken, TokenSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = Content::from_json(bytes::Bytes::copy_from_slice(data)) {
        let reply = ObjectResp::from_reply(&content);
        let _ = reply.error_reason();
        let _ = reply.error_message();
    }
    let _ = IssuedToken::parse(data).map(|t| t.needs_refresh(t.issued));
    if let Some(spec) = TokenSpec::of_request("ns", "sa", data) {
        let _ = spec.key();
        let _ = spec.query_message();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Extensions::parse(text);
        let record = SentRecord::parse(text);
        let rendered = record.render();
        assert_eq!(SentRecord::parse(&rendered), record, "a record reads back as written");
    }
});
