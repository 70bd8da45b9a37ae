//! A unified diff of two texts, for `--dry-run`. Configs are a few hundred lines, so a plain
//! longest-common-subsequence table is fast enough and saves a dependency.

use std::fmt::Write;

const CONTEXT: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// `diff -u` style output labelled `a/<label>` and `b/<label>`; empty when nothing differs.
/// An absent side (a file created or deleted) is labelled `/dev/null`.
pub fn unified(label: &str, before: Option<&str>, after: Option<&str>) -> String {
    let old: Vec<&str> = before
        .map(|text| text.lines().collect())
        .unwrap_or_default();
    let new: Vec<&str> = after.map(|text| text.lines().collect()).unwrap_or_default();
    let lines = align(&old, &new);
    if lines.iter().all(|line| matches!(line, Line::Same(_))) && before == after {
        return String::new();
    }
    let mut out = String::new();
    let from = before.map_or("/dev/null".to_string(), |_| format!("a/{label}"));
    let to = after.map_or("/dev/null".to_string(), |_| format!("b/{label}"));
    let _ = writeln!(out, "--- {from}\n+++ {to}");
    for hunk in hunks(&lines) {
        write_hunk(&mut out, &lines, hunk);
    }
    out
}

/// Lines of both texts in order, matched by a longest common subsequence.
fn align<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<Line<'a>> {
    let (n, m) = (old.len(), new.len());
    // common[i][j]: length of the LCS of old[i..] and new[j..].
    let mut common = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            common[i][j] = if old[i] == new[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut lines = Vec::with_capacity(n.max(m));
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            lines.push(Line::Same(old[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || common[i][j + 1] >= common[i + 1][j]) {
            lines.push(Line::Added(new[j]));
            j += 1;
        } else {
            lines.push(Line::Removed(old[i]));
            i += 1;
        }
    }
    lines
}

/// Ranges of `lines` to print: each change with up to three lines of context, ranges that
/// touch merged.
fn hunks(lines: &[Line]) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if matches!(line, Line::Same(_)) {
            continue;
        }
        let start = index.saturating_sub(CONTEXT);
        let end = (index + CONTEXT + 1).min(lines.len());
        match ranges.last_mut() {
            Some(last) if start <= last.end => last.end = end,
            _ => ranges.push(start..end),
        }
    }
    ranges
}

fn write_hunk(out: &mut String, lines: &[Line], hunk: std::ops::Range<usize>) {
    // Line numbers (1-based) where the hunk starts in each text.
    let old_start = 1 + lines[..hunk.start]
        .iter()
        .filter(|line| !matches!(line, Line::Added(_)))
        .count();
    let new_start = 1 + lines[..hunk.start]
        .iter()
        .filter(|line| !matches!(line, Line::Removed(_)))
        .count();
    let body = &lines[hunk];
    let old_len = body
        .iter()
        .filter(|line| !matches!(line, Line::Added(_)))
        .count();
    let new_len = body
        .iter()
        .filter(|line| !matches!(line, Line::Removed(_)))
        .count();
    // diff -u names the line before an empty range.
    let position = |start: usize, len: usize| if len == 0 { start - 1 } else { start };
    let _ = writeln!(
        out,
        "@@ -{},{old_len} +{},{new_len} @@",
        position(old_start, old_len),
        position(new_start, new_len)
    );
    for line in body {
        let _ = match line {
            Line::Same(text) => writeln!(out, " {text}"),
            Line::Removed(text) => writeln!(out, "-{text}"),
            Line::Added(text) => writeln!(out, "+{text}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_give_nothing() {
        assert_eq!(unified("f", Some("a\nb\n"), Some("a\nb\n")), "");
    }

    #[test]
    fn insertion_with_context() {
        let before = "1\n2\n3\n4\n5\n6\n7\n8\n";
        let after = "1\n2\n3\n4\nnew\n5\n6\n7\n8\n";
        assert_eq!(
            unified("f", Some(before), Some(after)),
            "--- a/f\n+++ b/f\n@@ -2,6 +2,7 @@\n 2\n 3\n 4\n+new\n 5\n 6\n 7\n"
        );
    }

    #[test]
    fn created_file() {
        assert_eq!(
            unified("f", None, Some("x\n")),
            "--- /dev/null\n+++ b/f\n@@ -0,0 +1,1 @@\n+x\n"
        );
    }

    #[test]
    fn removed_file() {
        assert_eq!(
            unified("f", Some("x\n"), None),
            "--- a/f\n+++ /dev/null\n@@ -1,1 +0,0 @@\n-x\n"
        );
    }
}
