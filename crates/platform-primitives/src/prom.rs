//! Prometheus text exposition (format 0.0.4), written once for every daemon in the workspace.
//!
//! varta-watch's `/metrics`, squib-host's pager service and sqry-admission's exporter all render
//! their numbers through this writer, so each of them gets the same escaping, the same number
//! formatting (`NaN`, `+Inf`, `-Inf`) and the same family layout — one `# HELP` and one `# TYPE`
//! line per family, then its samples — without a client library's registry, atomics or global
//! state: the caller already owns its counters and only needs them written out.
//!
//! Metric and label names are written as given and checked in debug builds (they are constants
//! in the caller's code); label values and help texts may be anything and are escaped.
//!
//! ```
//! use platform_primitives::prom::Exposition;
//!
//! let mut text = Exposition::new();
//! text.counter("jobs_total", "Jobs finished.").value(42_u64);
//! let mut agents = text.gauge("agent_up", "Whether the agent answers.");
//! agents.sample(&[("service", &"web \"eu\""), ("pid", &4242)], true);
//! text.histogram("wait_seconds", "Time spent waiting.")
//!     .observe(&[], &[0.001, 0.01], &[3, 1, 0], Some(0.012));
//! let text = text.into_string();
//! assert_eq!(
//!     text.lines().collect::<Vec<_>>(),
//!     [
//!         "# HELP jobs_total Jobs finished.",
//!         "# TYPE jobs_total counter",
//!         "jobs_total 42",
//!         "# HELP agent_up Whether the agent answers.",
//!         "# TYPE agent_up gauge",
//!         r#"agent_up{service="web \"eu\"",pid="4242"} 1"#,
//!         "# HELP wait_seconds Time spent waiting.",
//!         "# TYPE wait_seconds histogram",
//!         r#"wait_seconds_bucket{le="0.001"} 3"#,
//!         r#"wait_seconds_bucket{le="0.01"} 4"#,
//!         r#"wait_seconds_bucket{le="+Inf"} 4"#,
//!         "wait_seconds_sum 0.012",
//!         "wait_seconds_count 4",
//!     ]
//! );
//! ```

use std::fmt::{self, Display, Write as _};

/// The `Content-Type` of a response carrying this text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One label of a sample: its name and anything that displays as its value.
pub type Label<'a> = (&'a str, &'a dyn Display);

/// A page of metric families being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty page with room for `bytes` of text.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            out: String::with_capacity(bytes),
        }
    }

    /// Starts a counter family (a total that only grows; by convention its name ends `_total`).
    pub fn counter<'a>(&'a mut self, name: &'a str, help: &str) -> Family<'a> {
        self.family(name, help, "counter")
    }

    /// Starts a gauge family (a value that goes up and down).
    pub fn gauge<'a>(&'a mut self, name: &'a str, help: &str) -> Family<'a> {
        self.family(name, help, "gauge")
    }

    /// Starts a histogram family (`_bucket`, `_sum` and `_count` series).
    pub fn histogram<'a>(&'a mut self, name: &'a str, help: &str) -> Histogram<'a> {
        let family = self.family(name, help, "histogram");
        Histogram { family }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// The finished text.
    pub fn into_string(self) -> String {
        self.out
    }

    fn family<'a>(&'a mut self, name: &'a str, help: &str, kind: &str) -> Family<'a> {
        debug_assert!(valid_name(name, true), "invalid metric name {name:?}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind);
        self.out.push('\n');
        Family {
            out: &mut self.out,
            name,
        }
    }
}

/// The samples of one counter or gauge family.
#[derive(Debug)]
#[must_use = "a family without samples exports only its HELP and TYPE lines"]
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl Family<'_> {
    /// Writes the family's one unlabelled sample.
    pub fn value(&mut self, value: impl Value) -> &mut Self {
        self.sample(&[], value)
    }

    /// Writes one sample with `labels`.
    pub fn sample(&mut self, labels: &[Label<'_>], value: impl Value) -> &mut Self {
        write_sample(self.out, self.name, "", labels, None, &value);
        self
    }
}

/// The series of one histogram family.
#[derive(Debug)]
#[must_use = "a family without samples exports only its HELP and TYPE lines"]
pub struct Histogram<'a> {
    family: Family<'a>,
}

impl Histogram<'_> {
    /// Writes one histogram: `bounds` are the finite upper bounds in increasing order and
    /// `counts` the observations in each bucket, not cumulated, with one more entry than
    /// `bounds` for the observations above the last bound. The `_bucket` series is cumulated
    /// here; `sum` is the total of all observed values, when the caller keeps it.
    ///
    /// # Panics
    ///
    /// If `counts` does not have exactly one entry more than `bounds`: a programming error in
    /// the caller, whose bucket layout is fixed.
    pub fn observe(
        &mut self,
        labels: &[Label<'_>],
        bounds: &[f64],
        counts: &[u64],
        sum: Option<f64>,
    ) -> &mut Self {
        assert_eq!(
            counts.len(),
            bounds.len() + 1,
            "histogram {}: {} counts for {} bounds (one more count than bounds is needed)",
            self.family.name,
            counts.len(),
            bounds.len()
        );
        let out = &mut *self.family.out;
        let name = self.family.name;
        let mut cumulative = 0_u64;
        for (i, n) in counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(*n);
            let le = Le(bounds.get(i).copied().unwrap_or(f64::INFINITY));
            write_sample(out, name, "_bucket", labels, Some(&le), &cumulative);
        }
        if let Some(sum) = sum {
            write_sample(out, name, "_sum", labels, None, &sum);
        }
        write_sample(out, name, "_count", labels, None, &cumulative);
        self
    }
}

/// A number as a sample value.
pub trait Value {
    /// Writes the value in the exposition's number syntax.
    fn write_to(&self, out: &mut String);
}

macro_rules! integer_values {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
integer_values!(u8, u16, u32, u64, usize, i32, i64);

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        write_float(out, *self);
    }
}

impl Value for bool {
    fn write_to(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

impl Value for std::time::Duration {
    /// In seconds, the unit Prometheus names expect (`…_seconds`).
    fn write_to(&self, out: &mut String) {
        write_float(out, self.as_secs_f64());
    }
}

impl<T: Value + ?Sized> Value for &T {
    fn write_to(&self, out: &mut String) {
        (**self).write_to(out);
    }
}

fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A bucket bound as an `le` label value.
struct Le(f64);

impl Display for Le {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        write_float(&mut s, self.0);
        f.write_str(&s)
    }
}

fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[Label<'_>],
    le: Option<&dyn Display>,
    value: &dyn Value,
) {
    out.push_str(name);
    out.push_str(suffix);
    let le_label = le.map(|v| ("le", v));
    let mut all = labels.iter().copied().chain(le_label).peekable();
    if all.peek().is_some() {
        out.push('{');
        for (i, (label, v)) in all.enumerate() {
            debug_assert!(valid_name(label, false), "invalid label name {label:?}");
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            let _ = write!(EscapeLabel(out), "{v}");
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    value.write_to(out);
    out.push('\n');
}

/// Escapes a label value as it is displayed into the page: backslash, quote and newline.
struct EscapeLabel<'a>(&'a mut String);

impl fmt::Write for EscapeLabel<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names; no `:` for label names.
fn valid_name(name: &str, metric: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic()
            || c == '_'
            || (metric && c == ':')
            || (!first && c.is_ascii_digit())
    };
    let mut chars = name.chars();
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reverses [`EscapeLabel`], as a scraper would read the value back.
    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn label_values_round_trip_through_escaping() {
        for value in [
            "plain",
            "a\"b",
            "back\\slash",
            "two\nlines",
            "\\\"\n",
            "",
            "ünï",
        ] {
            let mut page = Exposition::new();
            page.gauge("g", "h").sample(&[("v", &value)], 1_u8);
            let text = page.into_string();
            let sample = text.lines().nth(2).expect("a sample line");
            let inner = sample
                .strip_prefix("g{v=\"")
                .and_then(|s| s.strip_suffix("\"} 1"))
                .unwrap_or_else(|| panic!("sample line {sample:?} is not g{{v=\"…\"}} 1"));
            assert!(
                !inner.contains('\n'),
                "a newline escaped nothing: {inner:?}"
            );
            assert_eq!(unescape(inner), value);
        }
    }

    #[test]
    fn help_text_cannot_break_the_page() {
        let mut page = Exposition::new();
        page.counter("c_total", "first\nsecond \\ third")
            .value(1_u64);
        assert_eq!(
            page.into_string(),
            "# HELP c_total first\\nsecond \\\\ third\n# TYPE c_total counter\nc_total 1\n"
        );
    }

    #[test]
    fn special_floats_use_the_exposition_spelling() {
        let mut page = Exposition::new();
        let mut g = page.gauge("f", "h");
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.25, -3.0] {
            g.value(v);
        }
        let text = page.into_string();
        let values: Vec<&str> = text.lines().skip(2).map(|l| &l[2..]).collect();
        assert_eq!(values, ["NaN", "+Inf", "-Inf", "0.25", "-3"]);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_inf() {
        let mut page = Exposition::new();
        page.histogram("h_seconds", "h").observe(
            &[("session", &"a")],
            &[0.5, 1.0],
            &[2, 0, 5],
            None,
        );
        assert_eq!(
            page.into_string(),
            "# HELP h_seconds h\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{session=\"a\",le=\"0.5\"} 2\n\
             h_seconds_bucket{session=\"a\",le=\"1\"} 2\n\
             h_seconds_bucket{session=\"a\",le=\"+Inf\"} 7\n\
             h_seconds_count{session=\"a\"} 7\n"
        );
    }

    #[test]
    #[should_panic(expected = "one more count than bounds")]
    fn histogram_with_mismatched_buckets_is_refused() {
        let mut page = Exposition::new();
        page.histogram("h", "h").observe(&[], &[1.0], &[1], None);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("a_b:c1", true));
        assert!(!valid_name("a_b:c1", false));
        assert!(!valid_name("1abc", true));
        assert!(!valid_name("", true));
        assert!(!valid_name("a-b", true));
    }
}
