//! The kubelet's pod-resources `List` answer: arbitrary bytes decoded as the gRPC
//! client decodes them (prost, the kubelet's field numbers), then mapped onto two GPUs
//! as attribution does. A malformed answer must be a decode error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otel_gpu_receiver::attribution::kubelet::pb::ListPodResourcesResponse;
use otel_gpu_receiver::attribution::kubelet::{Allocations, GpuIdentity, resolve_device_id};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let gpus = [
        GpuIdentity {
            uuid: "GPU-00000000-1111-2222-3333-444444444444".into(),
            index: 0,
            minor_number: Some(0),
        },
        GpuIdentity {
            uuid: "GPU-55555555-6666-7777-8888-999999999999".into(),
            index: 1,
            minor_number: None,
        },
    ];
    if let Ok(list) = ListPodResourcesResponse::decode(data) {
        let a = Allocations::from_list(&list, &gpus);
        for holders in a.by_gpu.values() {
            assert!(
                holders.windows(2).all(|w| w[0] < w[1]),
                "sorted, no duplicates"
            );
        }
    }
    if let Ok(id) = std::str::from_utf8(data) {
        let _ = resolve_device_id(id, &gpus);
    }
});
