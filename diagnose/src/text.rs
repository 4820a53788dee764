//! Peer text made safe to print.

/// Peer text made safe to print on one line: control characters escaped, at most `max`
/// characters kept.
pub(crate) fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for (count, c) in text.chars().enumerate() {
        if count == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_escapes_and_truncates() {
        assert_eq!(clean("a\nb\u{1b}", 10), "a\\nb\\u{1b}");
        assert_eq!(clean("ééééé", 2), "éé…");
    }
}
