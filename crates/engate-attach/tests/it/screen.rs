//! The screen provider skips text that scrolls away unseen: after any stream, split anywhere
//! into feeds and mixed with resizes, its screen is exactly that of a parser fed every byte.

#![cfg(feature = "screen")]

use engate_attach::ScreenProvider;
use engate_attach::SnapshotProvider;
use proptest::prelude::*;

/// The whole parser state, for comparison (cells, attributes, wrap flags, cursor, saved cursor,
/// scroll regions, modes of both screens).
fn state(screen: &vt100::Screen) -> String {
    format!("{screen:?}")
}

/// Feeds both `ours` and a parser given every byte, then compares them; then makes both repeat
/// their last printed character (REP), which shows whether they remember the same one.
fn same(ours: &mut ScreenProvider, reference: &mut vt100::Parser) -> Result<(), String> {
    // The redraw first: a snapshot must cover everything fed, held-back text included. It is
    // compared with what the provider draws from a screen (the primary screen under the
    // alternate one, then the state), drawn here from the reference.
    let mut redraw = Vec::new();
    ours.snapshot(&mut redraw);
    let screen = reference.screen();
    let mut expected = Vec::new();
    if screen.alternate_screen() {
        let (rows, cols) = screen.size();
        let mut scratch = parser(rows.get(), cols.get());
        *scratch.screen_mut() = screen.clone();
        scratch.process(b"\x1b[?1049l");
        expected.extend_from_slice(scratch.screen().contents_formatted().as_bytes());
        expected.extend_from_slice(b"\x1b[?1049h");
    }
    expected.extend_from_slice(screen.state_formatted().as_bytes());
    if redraw != expected {
        return Err(format!(
            "the redraw differs\nredraw:   {:?}\nexpected: {:?}",
            String::from_utf8_lossy(&redraw),
            String::from_utf8_lossy(&expected)
        ));
    }
    let (a, b) = (ours.screen().clone(), reference.screen());
    let (sa, sb) = (state(&a), state(b));
    if sa != sb {
        // Where the two first differ, with some context either side.
        let at = sa
            .bytes()
            .zip(sb.bytes())
            .position(|(x, y)| x != y)
            .unwrap_or(0);
        return Err(format!(
            "screens differ at {:?} / {:?}\nours:      {:?}\nreference: {:?}",
            &sa[at.saturating_sub(80)..(at + 80).min(sa.len())],
            &sb[at.saturating_sub(80)..(at + 80).min(sb.len())],
            a.contents(),
            b.contents()
        ));
    }
    ours.feed(b"\x1b[3b");
    reference.process(b"\x1b[3b");
    if state(ours.screen()) != state(reference.screen()) {
        return Err("the last printed character differs".into());
    }
    Ok(())
}

fn parser(rows: u16, cols: u16) -> vt100::Parser {
    let nz = |n| std::num::NonZeroU16::new(n).expect("not zero");
    vt100::Parser::new(nz(rows), nz(cols), 0)
}

fn line(n: usize, len: usize) -> String {
    let body: String = format!("line {n} ")
        .chars()
        .chain(std::iter::repeat('x'))
        .take(len)
        .collect();
    body
}

/// Pieces of terminal output: plain lines (long ones wrap), bulk text that scrolls a lot, and
/// everything that changes the state plain text does not touch.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (0usize..1000, 0usize..40).prop_map(|(n, len)| format!("{}\r\n", line(n, len)).into_bytes()),
        4 => (5usize..80, 0usize..30).prop_map(|(lines, len)| {
            (0..lines).map(|n| format!("{}\r\n", line(n, len))).collect::<String>().into_bytes()
        }),
        1 => (0usize..1000).prop_map(|n| format!("{}\n", line(n, 7)).into_bytes()),
        1 => Just(b"a\tb\x08c\te\r".to_vec()),
        1 => Just("caf\u{e9} \u{6f22}\u{5b57} e\u{301}\r\n".as_bytes().to_vec()),
        1 => Just(vec![0xE6, 0xBC]),
        1 => Just(b"\x1b[1;31m".to_vec()),
        1 => Just(b"\x1b[0m".to_vec()),
        1 => Just(b"\x1b[44m".to_vec()),
        1 => (1u16..10, 1u16..30).prop_map(|(r, c)| format!("\x1b[{r};{c}H").into_bytes()),
        1 => (1u16..6, 2u16..9).prop_map(|(t, b)| format!("\x1b[{t};{b}r").into_bytes()),
        1 => Just(b"\x1b[r".to_vec()),
        1 => Just(b"\x1b[?1049h".to_vec()),
        1 => Just(b"\x1b[?1049l".to_vec()),
        1 => Just(b"\x1b[?47h".to_vec()),
        1 => Just(b"\x1bM".to_vec()),
        1 => Just(b"\x1b[2b".to_vec()),
        1 => Just(b"\x1b]0;title\x07".to_vec()),
        1 => Just(b"\x1b]2;never ended ".to_vec()),
        1 => Just(b"\x1bPq#0;2;0;0;0\x1b\\".to_vec()),
        1 => Just(b"\x1b[?6h".to_vec()),
        1 => Just(b"\x1b[?6l".to_vec()),
        1 => Just(b"\x1b[4h".to_vec()),
        1 => Just(b"\x1b[4l".to_vec()),
        1 => Just(b"\x1b[?7l".to_vec()),
        1 => Just(b"\x1b[?7h".to_vec()),
        1 => Just(b"\x1b[2J".to_vec()),
        1 => Just(b"\x1b7".to_vec()),
        1 => Just(b"\x1b8".to_vec()),
        1 => Just(b"\x18".to_vec()),
        1 => Just(b"\x1b".to_vec()),
        1 => Just(b"\x1b[".to_vec()),
    ]
}

#[derive(Clone)]
enum Op {
    Output(Vec<u8>, Vec<usize>),
    Resize(u16, u16),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Output(bytes, cuts) => {
                write!(f, "Output({:?}, {cuts:?})", String::from_utf8_lossy(bytes))
            }
            Self::Resize(r, c) => write!(f, "Resize({r}, {c})"),
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (prop::collection::vec(fragment(), 1..12), prop::collection::vec(any::<usize>(), 0..4))
            .prop_map(|(parts, cuts)| Op::Output(parts.concat(), cuts)),
        1 => (3u16..10, 5u16..40).prop_map(|(r, c)| Op::Resize(r, c)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn skipping_text_never_changes_the_screen(
        rows in 3u16..9,
        cols in 5u16..40,
        ops in prop::collection::vec(op(), 1..12),
    ) {
        let mut ours = ScreenProvider::new(rows, cols);
        let mut reference = parser(rows, cols);
        for op in ops {
            match op {
                Op::Output(bytes, cuts) => {
                    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
                    cuts.sort_unstable();
                    let mut from = 0;
                    for cut in cuts.into_iter().chain([bytes.len()]) {
                        ours.feed(&bytes[from..cut]);
                        from = cut;
                    }
                    // Whole: the parser itself does not always join a character split across
                    // two calls (vte 0.15), and ours holds a plain end back until more comes.
                    reference.process(&bytes);
                }
                Op::Resize(r, c) => {
                    ours.resize(r, c);
                    reference.screen_mut().set_size(
                        std::num::NonZeroU16::new(r).unwrap(),
                        std::num::NonZeroU16::new(c).unwrap(),
                    );
                }
            }
            if let Err(e) = same(&mut ours, &mut reference) {
                return Err(TestCaseError::fail(e));
            }
        }
    }
}

/// Bulk text is skipped (most of it), and the result is still exact; with a scroll region
/// smaller than the screen, nothing is skipped.
#[test]
fn bulk_text_is_skipped_unless_the_scroll_region_is_partial() {
    let text: String = (0..10_000)
        .map(|n| format!("{}\r\n", line(n, 60)))
        .collect();
    let mut ours = ScreenProvider::new(24, 80);
    let mut reference = parser(24, 80);
    ours.feed(text.as_bytes());
    reference.process(text.as_bytes());
    same(&mut ours, &mut reference).unwrap();
    assert!(
        ours.skipped_bytes() > text.len() as u64 * 9 / 10,
        "skipped {} of {}",
        ours.skipped_bytes(),
        text.len()
    );

    // Fed as a pty delivers it, 4 KiB at a time: the end of each piece is held back and
    // skipped with the next one.
    let mut ours = ScreenProvider::new(24, 80);
    let mut reference = parser(24, 80);
    reference.process(text.as_bytes());
    for piece in text.as_bytes().chunks(4096) {
        ours.feed(piece);
    }
    same(&mut ours, &mut reference).unwrap();
    assert!(
        ours.skipped_bytes() > text.len() as u64 * 9 / 10,
        "4 KiB pieces: skipped {} of {}",
        ours.skipped_bytes(),
        text.len()
    );

    let mut ours = ScreenProvider::new(24, 80);
    let mut reference = parser(24, 80);
    ours.feed(b"\x1b[5;20r");
    reference.process(b"\x1b[5;20r");
    ours.feed(text.as_bytes());
    reference.process(text.as_bytes());
    same(&mut ours, &mut reference).unwrap();
    assert_eq!(ours.skipped_bytes(), 0);
}
