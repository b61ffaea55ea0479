//! The CoAP endpoint's decision on one datagram from a fresh peer (the same code the socket loop
//! runs, without the socket): it must never panic, and every answer must fit one datagram
//! (RFC 7252 §4.6: 1152 bytes), and an acknowledgement or reset must echo the message id of the
//! confirmable message it answers (a non-confirmable answer carries its own id, §4.3).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(answer) = engine::transport::coap::decide::answer(data) {
        assert!(answer.len() <= 1152, "answer of {} bytes", answer.len());
        assert!(answer.len() >= 4, "an answer without a header");
        let confirmable = data.len() >= 4 && (data[0] >> 4) & 0b11 == 0;
        let ack_or_reset = (answer[0] >> 4) & 0b11 >= 2;
        if confirmable && ack_or_reset {
            assert_eq!(answer[2..4], data[2..4], "the answer's message id differs");
        }
    }
});
