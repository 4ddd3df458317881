//! The multi-threaded refusal. The single-threaded success case runs in the `single_thread`
//! test binary, which has no harness threads.

use platform_primitives::threads::{PreThreadAttestation, ThreadCheckError};

#[test]
fn multi_threaded_process_is_refused() {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let b2 = std::sync::Arc::clone(&barrier);
    let parked = std::thread::spawn(move || {
        b2.wait();
        std::thread::park();
    });
    barrier.wait();

    let result = PreThreadAttestation::new();
    parked.thread().unpark();
    parked.join().expect("join");

    let err = result.expect_err("a multi-threaded process must be refused");
    assert!(err.to_string().contains("multi-threaded"), "{err}");
    match err {
        ThreadCheckError::MultiThreaded { threads } => assert!(threads >= 2, "{threads}"),
        other => panic!("unexpected error: {other}"),
    }
}
