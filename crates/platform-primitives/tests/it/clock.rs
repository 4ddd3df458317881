//! Both clock sources advance at the rate of real time, and boottime is the clock /proc/uptime
//! reports (the one that counts suspend).

use std::time::Duration;

use platform_primitives::clock::ClockSource;

#[test]
fn both_sources_advance_across_a_sleep() {
    for source in [ClockSource::Monotonic, ClockSource::Boottime] {
        let a = source.now().expect("read clock");
        std::thread::sleep(Duration::from_millis(20));
        let b = source.now().expect("read clock");
        let elapsed = b.saturating_since(a);
        assert!(
            elapsed >= Duration::from_millis(20),
            "{source:?}: {elapsed:?}"
        );
        assert!(elapsed < Duration::from_secs(5), "{source:?}: {elapsed:?}");
        assert_eq!(a.saturating_since(b), Duration::ZERO);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn boottime_is_the_clock_behind_proc_uptime() {
    let uptime = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    let boot = ClockSource::Boottime.now().expect("boottime");
    let secs: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("uptime seconds");
    let diff = (boot.as_duration().as_secs_f64() - secs).abs();
    assert!(diff < 0.5, "boottime {boot:?} vs /proc/uptime {secs}");
    // Monotonic excludes suspended time, so it can never be ahead of boottime.
    let mono = ClockSource::Monotonic.now().expect("monotonic");
    assert!(mono.as_duration() <= ClockSource::Boottime.now().expect("boottime").as_duration());
}
