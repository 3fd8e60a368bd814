//! DMI protobuf messages as they arrive on edgecore's and a mapper's gRPC sockets: never panic;
//! what decodes re-encodes to bytes that decode to the same message.
#![no_main]

use kubeedge_proto::dmi;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn round_trip<T: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(msg) = T::decode(data) {
        let again = T::decode(msg.encode_to_vec().as_slice()).expect("own output decodes");
        assert_eq!(again, msg);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<dmi::MapperRegisterRequest>(data);
    round_trip::<dmi::MapperRegisterResponse>(data);
    round_trip::<dmi::ReportDeviceStatusRequest>(data);
    round_trip::<dmi::ReportDeviceStatesRequest>(data);
    round_trip::<dmi::RegisterDeviceRequest>(data);
    round_trip::<dmi::UpdateDeviceModelRequest>(data);
    round_trip::<dmi::GetDeviceResponse>(data);
});
