//! Integration tests: the real binary on an ephemeral port, real TCP.

mod support;

mod redis;

mod smoke {
    use super::support::*;
    use std::time::Duration;

    #[test]
    fn demo_stream_starts_with_event_one() {
        let server = TestServer::start(&[]);
        let mut client = SseClient::connect(server.addr, "/", &[]);
        assert_eq!(client.status(), 200, "{}", client.head);
        let block = client.next_block(Duration::from_secs(5)).expect("first event");
        assert_eq!(block, "id: 1\nevent: new_message\ndata: message_content");
    }
}
