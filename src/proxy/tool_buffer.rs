//! The tool buffer of the `obsidian-xml` output mode: streamed text passes through, except
//! that from a `<use_tool` opener to its `</use_tool>` closer the text is held back and
//! emitted once, whole, so a client never sees half a tool call.
//!
//! Held text is flushed verbatim (never dropped, never rewritten) when the block cannot
//! complete: a second opener inside the block (`nested_open`; the new opener then starts a
//! block of its own), the end of the turn (`finalize`), or the response being abandoned
//! (`disconnect`, counted when the buffer is dropped unfinished; there is no one left to
//! send the text to). Whatever the split of the input, the output is the input.

use crate::metrics::{AbortReason, ToolBufferEvent};

const OPEN: &[u8] = b"<use_tool";
const CLOSE: &[u8] = b"</use_tool>";

/// Where an opener was found in the text.
#[derive(Debug, PartialEq, Eq)]
enum Opener {
    /// A complete opener (`<use_tool` then `>` or whitespace) starts here.
    At(usize),
    /// The text ends with what may become an opener; more text decides.
    MaybeAt(usize),
    None,
}

pub(crate) struct ToolBuffer {
    /// Passing through: only a tail that may begin an opener. In a block: the whole
    /// block so far, opener included.
    pending: String,
    in_block: bool,
    /// In a block: bytes of `pending` already searched for a closer or nested opener.
    scanned: usize,
    finished: bool,
    report: Box<dyn FnMut(ToolBufferEvent) + Send>,
}

impl ToolBuffer {
    /// `report` receives every started/flushed/aborted event (the metrics counters).
    pub(crate) fn new(report: Box<dyn FnMut(ToolBufferEvent) + Send>) -> ToolBuffer {
        ToolBuffer {
            pending: String::new(),
            in_block: false,
            scanned: 0,
            finished: false,
            report,
        }
    }

    /// Takes the next piece of the reply; returns the text that may go out now.
    pub(crate) fn push(&mut self, chunk: &str) -> String {
        self.pending.push_str(chunk);
        let mut out = String::new();
        loop {
            if self.in_block {
                if !self.advance_block(&mut out) {
                    return out;
                }
            } else {
                match find_opener(self.pending.as_bytes(), 0) {
                    Opener::At(i) => {
                        out.extend(self.pending.drain(..i));
                        self.open_block();
                    }
                    Opener::MaybeAt(i) => {
                        out.extend(self.pending.drain(..i));
                        return out;
                    }
                    Opener::None => {
                        out.push_str(&self.pending);
                        self.pending.clear();
                        return out;
                    }
                }
            }
        }
    }

    /// The end of the turn: whatever is still held goes out verbatim.
    pub(crate) fn finish(&mut self) -> String {
        self.finished = true;
        if self.in_block {
            self.in_block = false;
            (self.report)(ToolBufferEvent::Aborted(AbortReason::Finalize));
        }
        std::mem::take(&mut self.pending)
    }

    fn open_block(&mut self) {
        self.in_block = true;
        self.scanned = OPEN.len();
        (self.report)(ToolBufferEvent::Started);
    }

    /// Moves a block forward; true when it ended (closed or aborted) and the rest of
    /// `pending` needs looking at again.
    fn advance_block(&mut self, out: &mut String) -> bool {
        let bytes = self.pending.as_bytes();
        let close = find(bytes, CLOSE, self.scanned);
        let nested = match find_opener(bytes, self.scanned) {
            Opener::At(k) => Some(k),
            _ => None,
        };
        match (close, nested) {
            (Some(j), n) if n.is_none_or(|k| j < k) => {
                out.extend(self.pending.drain(..j + CLOSE.len()));
                self.in_block = false;
                (self.report)(ToolBufferEvent::Flushed);
                true
            }
            (_, Some(k)) => {
                out.extend(self.pending.drain(..k));
                (self.report)(ToolBufferEvent::Aborted(AbortReason::NestedOpen));
                self.open_block();
                true
            }
            _ => {
                // Back up far enough to find a closer or opener split across pushes.
                self.scanned = self
                    .scanned
                    .max(self.pending.len().saturating_sub(CLOSE.len()));
                false
            }
        }
    }
}

impl Drop for ToolBuffer {
    fn drop(&mut self) {
        if !self.finished && self.in_block {
            (self.report)(ToolBufferEvent::Aborted(AbortReason::Disconnect));
        }
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Positions found are those of an ASCII `<`, so they are char boundaries.
fn find_opener(hay: &[u8], from: usize) -> Opener {
    let mut start = from;
    while let Some(i) = find(hay, OPEN, start) {
        match hay.get(i + OPEN.len()) {
            None => return Opener::MaybeAt(i),
            Some(b) if *b == b'>' || b.is_ascii_whitespace() => return Opener::At(i),
            // `<use_tools`, `<use_toolbox`: not ours.
            Some(_) => start = i + 1,
        }
    }
    // A tail that is a proper prefix of the opener may still become one.
    let tail_from = hay.len().saturating_sub(OPEN.len() - 1).max(start);
    (tail_from..hay.len())
        .find(|&i| OPEN.starts_with(&hay[i..]))
        .map_or(Opener::None, Opener::MaybeAt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use ToolBufferEvent::{Aborted, Flushed, Started};

    /// A buffer whose events land in the returned vector.
    fn buffer() -> (ToolBuffer, Arc<Mutex<Vec<ToolBufferEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let b = ToolBuffer::new(Box::new(move |e| sink.lock().unwrap().push(e)));
        (b, events)
    }

    /// Pushes `pieces` one by one; returns the non-empty outputs, then the finish output.
    fn run(pieces: &[&str]) -> (Vec<String>, String, Vec<ToolBufferEvent>) {
        let (mut b, events) = buffer();
        let outs: Vec<String> = pieces
            .iter()
            .map(|p| b.push(p))
            .filter(|o| !o.is_empty())
            .collect();
        let last = b.finish();
        drop(b);
        let events = events.lock().unwrap().clone();
        (outs, last, events)
    }

    fn chars(s: &str) -> Vec<String> {
        s.chars().map(String::from).collect()
    }

    #[test]
    fn plain_text_passes_through_as_it_comes() {
        let (outs, last, events) = run(&["hello ", "<b>world</b>", " <use", "r> ok"]);
        assert_eq!(outs.concat() + &last, "hello <b>world</b> <user> ok");
        assert_eq!(outs[0], "hello ");
        assert!(events.is_empty());
    }

    #[test]
    fn a_block_split_across_pieces_is_emitted_once_whole() {
        let text = "before <use_tool name=\"x\"><q>é</q></use_tool> after";
        let pieces = chars(text);
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let (outs, last, events) = run(&refs);
        assert_eq!(outs.concat() + &last, text);
        let block = "<use_tool name=\"x\"><q>é</q></use_tool>";
        assert_eq!(outs.iter().filter(|o| o.contains("use_tool")).count(), 1);
        assert!(outs.iter().any(|o| o == block), "{outs:?}");
        assert_eq!(events, [Started, Flushed]);
    }

    #[test]
    fn a_nested_opener_flushes_the_held_text_verbatim_and_starts_again() {
        let (outs, last, events) = run(&[
            "a <use_tool n=1>first ",
            "<use_tool n=2>second</use_tool>",
            " z",
        ]);
        assert_eq!(
            outs,
            [
                "a ",
                "<use_tool n=1>first <use_tool n=2>second</use_tool>",
                " z"
            ]
        );
        assert_eq!(last, "");
        assert_eq!(
            events,
            [Started, Aborted(AbortReason::NestedOpen), Started, Flushed]
        );
    }

    #[test]
    fn nested_flush_goes_out_before_the_new_block_is_held() {
        let (mut b, _events) = buffer();
        assert_eq!(b.push("<use_tool>x "), "");
        assert_eq!(b.push("<use_tool>y"), "<use_tool>x ");
        assert_eq!(b.finish(), "<use_tool>y");
    }

    #[test]
    fn an_unterminated_block_is_flushed_at_the_end_of_the_turn() {
        let (outs, last, events) = run(&["ok <use_tool>never", " closed"]);
        assert_eq!(outs, ["ok "]);
        assert_eq!(last, "<use_tool>never closed");
        assert_eq!(events, [Started, Aborted(AbortReason::Finalize)]);
    }

    #[test]
    fn dropping_a_buffer_mid_block_counts_a_disconnect() {
        let (mut b, events) = buffer();
        b.push("<use_tool>held");
        drop(b);
        assert_eq!(
            *events.lock().unwrap(),
            [Started, Aborted(AbortReason::Disconnect)]
        );
    }

    #[test]
    fn lookalike_tags_are_not_openers() {
        let (outs, last, events) = run(&["<use_tools>", "<use_toolbox a>", "<use_tool"]);
        assert_eq!(outs.concat() + &last, "<use_tools><use_toolbox a><use_tool");
        assert!(events.is_empty());
    }

    #[test]
    fn any_split_of_any_mix_gives_back_the_input() {
        let parts = [
            "<use_tool>",
            "</use_tool>",
            "<use_tool x>",
            "text ",
            "ü",
            "<",
            "</use_t",
            "<use_tools>",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..500 {
            let text: String = (0..rng.usize(0..12))
                .map(|_| parts[rng.usize(..parts.len())])
                .collect();
            let (mut b, _events) = buffer();
            let mut out = String::new();
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let mut cut = rng.usize(1..=rest.len());
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                out.push_str(&b.push(&rest[..cut]));
                rest = &rest[cut..];
            }
            out.push_str(&b.finish());
            assert_eq!(out, text);
        }
    }
}
