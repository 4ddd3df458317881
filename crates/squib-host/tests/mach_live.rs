//! The live Mach exception-port server (macOS only; elsewhere every test prints a skip line).
//! `cargo xtask ci` runs this suite on macOS; the policy it drives is tested on every OS by the
//! unit tests of `squib_host::mach`.

#[cfg(target_os = "macos")]
mod macos {
    use std::time::{Duration, Instant};

    use squib_host::{MemorySource, Pager, PagerConfig, spawn_server};

    fn pager() -> Pager {
        let pager = Pager::new(
            MemorySource::new(vec![0u8; 1 << 20]),
            PagerConfig {
                poll_interval: Duration::from_millis(50),
                ..PagerConfig::default()
            },
        );
        pager.register_region(0x8000_0000, 0x10_0000).unwrap();
        pager
    }

    #[test]
    fn mach_server_joins_within_four_poll_intervals() {
        let pager = pager();
        let join = spawn_server(&pager).expect("spawn the Mach server");
        std::thread::sleep(Duration::from_millis(150));
        let asked = Instant::now();
        pager.request_shutdown();
        join.join().expect("thread").expect("server");
        assert!(asked.elapsed() <= Duration::from_millis(200));
    }
}

#[cfg(not(target_os = "macos"))]
#[test]
fn mach_server_joins_within_four_poll_intervals() {
    workspace_tests::support::skip(
        "mach_server_joins_within_four_poll_intervals",
        "the Mach server is macOS-only",
    );
}
