//! Server-sent events as chat completion streams send them: `data:` lines grouped into events by
//! blank lines, arriving in network reads that may split a line anywhere.

/// Reassembles lines across reads and yields each complete event's data.
#[derive(Default)]
pub(super) struct Decoder {
    /// Bytes after the last newline seen; decoded only once the line is complete, so a
    /// multi-byte character split across reads survives.
    partial: Vec<u8>,
    /// The data lines of the event being read, joined by `\n`.
    data: Option<String>,
}

impl Decoder {
    /// Consumes `bytes`, returning the data of every event they complete.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(newline) = self.partial[start..].iter().position(|&byte| byte == b'\n') {
            let end = start + newline;
            events.extend(read_line(&mut self.data, &self.partial[start..end]));
            start = end + 1;
        }
        self.partial.drain(..start);
        events
    }

    /// The last event when the stream ends without the blank line that should close it.
    pub(super) fn finish(mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.partial);
        read_line(&mut self.data, &rest);
        self.data
    }
}

/// Handles one line: a blank line ends the event, `data:` lines add to it, and everything else
/// (`event:`, `id:`, `: keep-alive` comments) is ignored.
fn read_line(data: &mut Option<String>, line: &[u8]) -> Option<String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return data.take();
    }
    let value = line.strip_prefix(b"data:")?;
    let value = String::from_utf8_lossy(value.strip_prefix(b" ").unwrap_or(value));
    match data {
        Some(joined) => {
            joined.push('\n');
            joined.push_str(&value);
        }
        None => *data = Some(value.into_owned()),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_are_reassembled() {
        let mut decoder = Decoder::default();
        assert!(decoder.feed(b"data: {\"a\":").is_empty());
        assert_eq!(decoder.feed(b"1}\n\ndata: [DO"), ["{\"a\":1}"]);
        assert_eq!(decoder.feed(b"NE]\n\n"), ["[DONE]"]);
    }

    #[test]
    fn crlf_comments_and_other_fields_are_handled() {
        let mut decoder = Decoder::default();
        let events = decoder.feed(b": keep-alive\r\n\r\nevent: message\r\ndata:x\r\ndata: y\r\n\r\n");
        assert_eq!(events, ["x\ny"]);
    }

    #[test]
    fn a_character_split_across_reads_survives() {
        let mut decoder = Decoder::default();
        let bytes = "data: é\n\n".as_bytes();
        assert!(decoder.feed(&bytes[..7]).is_empty());
        assert_eq!(decoder.feed(&bytes[7..]), ["é"]);
    }

    #[test]
    fn an_unterminated_last_event_is_returned_by_finish() {
        let mut decoder = Decoder::default();
        assert!(decoder.feed(b"data: [DONE]").is_empty());
        assert_eq!(decoder.finish().as_deref(), Some("[DONE]"));
    }
}
