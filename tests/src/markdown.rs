//! BENCHMARKS.md is written section by section: each benchmark replaces its own.

/// `md` with the section starting at `heading` (up to the next `## ` heading) replaced by
/// `section`; a missing section is put before `## Targets`, or at the end.
pub fn replace_section(md: &str, heading: &str, section: &str) -> String {
    let section = format!("{}\n", section.trim_end_matches('\n'));
    let starts: Vec<usize> = std::iter::once(0)
        .chain(md.match_indices("\n## ").map(|(i, _)| i + 1))
        .filter(|&i| md[i..].starts_with("## "))
        .collect();
    let at = |h: &str| starts.iter().copied().find(|&i| md[i..].lines().next() == Some(h));
    let (head, tail) = match at(heading) {
        Some(i) => (&md[..i], &md[starts.iter().copied().find(|&j| j > i).unwrap_or(md.len())..]),
        None => at("## Targets").map_or((md, ""), |i| (&md[..i], &md[i..])),
    };
    let head = match head.trim_end_matches('\n') {
        "" => String::new(),
        h => format!("{h}\n\n"),
    };
    if tail.is_empty() { format!("{head}{section}") } else { format!("{head}{section}\n{tail}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_or_added_before_targets() {
        let md = "# B\n\n## A\n\na\n\n## Mirror delay\n\nold\n\n## Targets\n\nt\n";
        assert_eq!(
            replace_section(md, "## Mirror delay", "## Mirror delay\n\nnew\n"),
            "# B\n\n## A\n\na\n\n## Mirror delay\n\nnew\n\n## Targets\n\nt\n"
        );
        let md = "# B\n\n## A\n\na\n\n## Targets\n\nt\n";
        assert_eq!(
            replace_section(md, "## Mirror delay", "## Mirror delay\n\nnew\n"),
            "# B\n\n## A\n\na\n\n## Mirror delay\n\nnew\n\n## Targets\n\nt\n"
        );
        let md = "# B\n\n## Mirror delay\n\nold\n";
        assert_eq!(
            replace_section(md, "## Mirror delay", "## Mirror delay\n\nnew\n"),
            "# B\n\n## Mirror delay\n\nnew\n"
        );
        assert_eq!(replace_section("# B\n", "## Mirror delay", "## Mirror delay\n"), "# B\n\n## Mirror delay\n");
        // A heading that merely starts the same is another section.
        let md = "## Mirror delay x\n\nkeep\n";
        assert_eq!(
            replace_section(md, "## Mirror delay", "## Mirror delay\n\nnew\n"),
            "## Mirror delay x\n\nkeep\n\n## Mirror delay\n\nnew\n"
        );
    }
}
