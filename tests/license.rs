//! License intelligence: identification of reproduced SPDX texts (over the full list the `spdx`
//! crate ships), and license markers in generated code.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use verbatim::license::markers::{self, MarkerKind};
use verbatim::license::{LicenseDb, texts};

/// Ids whose text is in the list and that are not deprecated.
fn current() -> impl Iterator<Item = &'static texts::LicenseText> {
    texts::all().iter().filter(|t| !texts::deprecated(t.id))
}

fn is(t: &texts::LicenseText, found: &verbatim::license::Identification) -> bool {
    found.same_text.iter().any(|i| t.ids.contains(&i.as_str()))
}

#[test]
fn every_spdx_text_is_identified_as_itself_when_reproduced_whole() {
    let db = LicenseDb::builtin();
    let mut wrong = Vec::new();
    let mut n = 0;
    for t in current() {
        n += 1;
        let r = db.identify(t.text).unwrap();
        if !is(t, &r) {
            wrong.push(format!("{} -> {}", t.id, r.id));
        }
        assert!(r.coverage > 0.99, "{}: coverage {}", t.id, r.coverage);
    }
    assert!(n > 650, "only {n} texts");
    assert!(wrong.is_empty(), "{} of {n} wrong: {wrong:?}", wrong.len());
}

/// Rewrapped at 9 words a line, upper-cased, behind `//`, `#` and ` * ` comment prefixes.
fn reformat(text: &str, prefix: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .chunks(9)
        .map(|c| format!("{prefix}{}\n", c.join(" ").to_uppercase()))
        .collect()
}

#[test]
fn every_spdx_text_is_identified_reformatted_behind_comment_prefixes() {
    let db = LicenseDb::builtin();
    for prefix in ["// ", "# ", " * "] {
        let mut wrong = Vec::new();
        for t in current() {
            let r = db.identify(&reformat(t.text, prefix)).unwrap();
            if !is(t, &r) {
                wrong.push(format!("{} -> {}", t.id, r.id));
            }
        }
        assert!(wrong.is_empty(), "{prefix:?}: {wrong:?}");
    }
}

#[test]
fn texts_that_share_most_words_are_told_apart() {
    let db = LicenseDb::builtin();
    for (id, not) in [
        ("GPL-2.0-only", "GPL-3.0-only"),
        ("GPL-3.0-only", "GPL-2.0-only"),
        ("BSD-2-Clause", "BSD-3-Clause"),
        ("BSD-3-Clause", "BSD-2-Clause"),
        ("MIT", "X11"),
        ("X11", "MIT"),
        ("LGPL-2.1-only", "LGPL-2.0-only"),
        ("Apache-2.0", "Apache-1.1"),
        ("MPL-2.0", "MPL-1.1"),
    ] {
        let t = texts::text_of(id).unwrap();
        let r = db.identify(&format!(
            "Here is the license you asked for:\n\n{}\n\nLet me know if you need anything else.",
            t.text
        ))
        .unwrap();
        assert!(r.same_text.iter().any(|i| i == id), "{id} -> {}", r.id);
        assert!(!r.same_text.iter().any(|i| i == not));
        assert!(
            r.runner_up.as_ref().unwrap().1 < r.score,
            "{id}: not clearly apart from {:?}",
            r.runner_up
        );
    }
    // The text alone does not say -only or -or-later: both ids are reported.
    let gpl = db
        .identify(texts::text_of("GPL-3.0-only").unwrap().text)
        .unwrap();
    assert_eq!(gpl.id, "GPL-3.0-only");
    assert!(gpl.same_text.contains(&"GPL-3.0-or-later".to_string()));
}

#[test]
fn partial_texts_of_at_least_half_a_license_are_identified() {
    // A contiguous 60 % of each text's lines (the middle, which is the hardest part: no
    // title, no signature lines). Texts that share that part with another license cannot be
    // told apart by anyone; the share identified is in docs/license-detection.md.
    let db = LicenseDb::builtin();
    let (mut n, mut ok) = (0, 0);
    for t in current() {
        let lines: Vec<&str> = t.text.lines().collect();
        if lines.len() < 5 {
            continue;
        }
        let k = lines.len() * 6 / 10;
        let s = (lines.len() - k) / 2;
        let part = lines[s..s + k].join("\n");
        n += 1;
        if db.identify(&part).is_some_and(|r| is(t, &r)) {
            ok += 1;
        }
    }
    let share = ok as f64 / n as f64;
    assert!(
        share >= 0.90,
        "{ok} of {n} partial texts identified ({share:.3})"
    );
}

#[test]
fn spdx_identifier_lines_are_parsed_and_imprecise_names_reported() {
    let m = markers::scan(
        "// SPDX-License-Identifier: GPL-2.0-or-later\n#!/usr/bin/env python\n# SPDX-License-Identifier: MIT OR Apache-2.0\n/* SPDX-License-Identifier: GPLv2+ */\n-- SPDX-License-Identifier: this is not a license (\n",
    );
    let ids: Vec<_> = m
        .iter()
        .filter(|m| m.kind == MarkerKind::SpdxIdentifier)
        .collect();
    assert_eq!(ids.len(), 4, "{m:?}");
    assert_eq!(ids[0].expression.as_deref(), Some("GPL-2.0-or-later"));
    assert_eq!(ids[0].imprecise, None);
    assert_eq!(ids[1].expression.as_deref(), Some("MIT OR Apache-2.0"));
    assert_eq!(ids[2].expression.as_deref(), Some("GPL-2.0-or-later"));
    assert_eq!(ids[2].imprecise.as_deref(), Some("GPLv2+"));
    assert!(ids[3].expression.is_none() && ids[3].problem.is_some());
}

/// Inside a string literal or JSON (a file written through a tool call) the line breaks are
/// escapes: the identifier ends at the backslash, and an unreadable one is quoted short.
#[test]
fn an_identifier_in_escaped_text_ends_at_the_backslash_and_problems_quote_little() {
    let json = r#"{"content":"// SPDX-License-Identifier: GPL-3.0-or-later\n// Copyright (C) 2024 The Ledger Tools Authors\n\nfn main() {}\n"}"#;
    let m = markers::scan(json);
    let id = m
        .iter()
        .find(|m| m.kind == MarkerKind::SpdxIdentifier)
        .expect("the identifier");
    assert_eq!(id.expression.as_deref(), Some("GPL-3.0-or-later"), "{m:?}");
    assert_eq!(id.problem, None);
    let long = format!("SPDX-License-Identifier: {}\n", "not a license ".repeat(20));
    let m = markers::scan(&long);
    let problem = m[0].problem.as_deref().expect("a problem");
    assert!(problem.chars().count() < 120, "{problem}");
}

#[test]
fn copyright_notices_carry_holder_and_years_and_prose_about_copyright_is_not_one() {
    let text = "/*\n * Copyright (c) 2019 Jane Doe <jane@example.org>\n * © 2020-2023 Acme Corp. All rights reserved.\n * (C) 2021, 2022 The Foo Authors\n */\nCopyright law protects original works.\nThe copyright holder may object.\n";
    let m: Vec<_> = markers::scan(text)
        .into_iter()
        .filter(|m| m.kind == MarkerKind::Copyright)
        .collect();
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(m[0].holder.as_deref(), Some("Jane Doe <jane@example.org>"));
    assert_eq!(m[0].years.as_deref(), Some("2019"));
    assert_eq!(m[1].holder.as_deref(), Some("Acme Corp"));
    assert_eq!(m[1].years.as_deref(), Some("2020-2023"));
    assert_eq!(m[2].holder.as_deref(), Some("The Foo Authors"));
    assert_eq!(
        &text[m[0].start as usize..m[0].end as usize],
        "Copyright (c) 2019 Jane Doe <jane@example.org>"
    );
}

#[test]
fn a_copyright_sign_in_binary_data_is_not_a_notice() {
    // `©` is the bytes C2 A9, which random data holds about once in 64 KiB; what follows
    // it there is not a holder. (2 MB of random bytes gave 32 such "notices".)
    let text = "\u{15}\u{1}c F © 2020 \u{17}8) \u{1c} W λ6 I\n© \u{0}b ? *  v Xy\n";
    let m = markers::scan(text);
    assert!(m.is_empty(), "{m:?}");
    // A tab is still whitespace in a notice.
    let m = markers::scan("Copyright (c)\t2019\tJane Doe\n");
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].holder.as_deref(), Some("Jane Doe"));
}

const GPL_HEADER: &str = "/*\n * This program is free software; you can redistribute it and/or modify\n * it under the terms of the GNU General Public License as published by\n * the Free Software Foundation; either version 2 of the License, or\n * (at your option) any later version.\n *\n * This program is distributed in the hope that it will be useful,\n * but WITHOUT ANY WARRANTY; without even the implied warranty of\n * MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.\n */\nint main(void) { return 0; }\n";

#[test]
fn license_header_phrases_name_the_license_and_version() {
    let cases = [
        (GPL_HEADER.to_string(), "GPL-2.0-or-later"),
        (
            GPL_HEADER.replace("either version 2 of the License, or\n * (at your option) any later version", "version 3 of the License"),
            "GPL-3.0-only",
        ),
        (
            "# Licensed under the Apache License, Version 2.0 (the \"License\");\n# you may not use this file except in compliance with the License.\n".to_string(),
            "Apache-2.0",
        ),
        (
            "// This Source Code Form is subject to the terms of the Mozilla Public\n// License, v. 2.0. If a copy of the MPL was not distributed with this\n".to_string(),
            "MPL-2.0",
        ),
        (
            " * under the terms of the GNU Lesser General Public License as published by\n * the Free Software Foundation; either version 2.1 of the License, or (at\n * your option) any later version.\n".to_string(),
            "LGPL-2.1-or-later",
        ),
        ("This project is licensed under the MIT License.".to_string(), "MIT"),
    ];
    for (text, want) in cases {
        let m: Vec<_> = markers::scan(&text)
            .into_iter()
            .filter(|m| m.kind == MarkerKind::HeaderPhrase)
            .collect();
        assert_eq!(m.len(), 1, "{text}: {m:?}");
        assert_eq!(m[0].expression.as_deref(), Some(want), "{text}");
    }
}

#[test]
fn markers_are_the_same_whatever_the_chunking() {
    let text = format!(
        "// SPDX-License-Identifier: Apache-2.0\n// Copyright 2024 Example Ltd\n{GPL_HEADER}fn main() {{}}\n"
    );
    let whole = markers::scan(&text);
    assert_eq!(whole.len(), 3, "{whole:?}");
    for size in [1, 2, 3, 7, 64] {
        let mut s = markers::MarkerScanner::new();
        let chars: Vec<char> = text.chars().collect();
        for c in chars.chunks(size) {
            s.push(&c.iter().collect::<String>());
        }
        s.finish();
        assert_eq!(s.take(), whole, "chunk {size}");
    }
}

/// The scanner forgets words no phrase can still need once it holds over 4,096 (and rebuilds
/// the text it searches): phrases, notices and identifiers far into a long text are found as
/// if the text began with them, at offsets shifted by what came before, at any chunking.
#[test]
fn markers_far_into_a_long_text_are_found_at_their_offsets() {
    let tail = format!(
        "// SPDX-License-Identifier: MIT
// Copyright 2024 Example Ltd
{GPL_HEADER}"
    );
    let near = markers::scan(&tail);
    assert_eq!(near.len(), 3, "{near:?}");
    // Six words a line: 4,080–4,200 words before the markers (the first time words are
    // forgotten falls inside the header, its phrases half searched, at one of these), then
    // 9,000 and 18,000.
    for lines in (680..=700).chain([1500, 3000]) {
        let filler = "lorem ipsum dolor sit amet consectetur\n".repeat(lines);
        let text = format!("{filler}{tail}");
        let shifted: Vec<_> = near
            .iter()
            .cloned()
            .map(|mut m| {
                m.start += filler.len() as u64;
                m.end += filler.len() as u64;
                m
            })
            .collect();
        assert_eq!(markers::scan(&text), shifted, "{lines} lines");
        let mut s = markers::MarkerScanner::new();
        for piece in text.as_bytes().chunks(97) {
            s.push(std::str::from_utf8(piece).unwrap());
        }
        s.finish();
        assert_eq!(s.take(), shifted, "{lines} lines, chunks of 97 bytes");
    }
}

#[test]
fn license_names_mentioned_in_passing_are_markers() {
    let cases = [
        (
            "This library is released under GPLv2.",
            Some("GPL-2.0-only"),
        ),
        (
            "It is covered by the Mozilla Public License 2.0.",
            Some("MPL-2.0"),
        ),
        (
            "Use it under the LGPL 2.1 or later.",
            Some("LGPL-2.1-or-later"),
        ),
        (
            "Dual-licensed: GPLv3 or the MIT license.",
            Some("GPL-3.0-only"),
        ),
        (
            "Code is BSD 3-Clause, docs are CC-BY-4.0.",
            Some("BSD-3-Clause"),
        ),
        ("MIT researchers published the paper in 2020.", None),
        ("Read the license before you use the software.", None),
    ];
    for (text, want) in cases {
        let names: Vec<_> = markers::scan(text)
            .into_iter()
            .filter(|m| m.kind == MarkerKind::LicenseName)
            .collect();
        match want {
            Some(id) => {
                assert!(!names.is_empty(), "{text}: nothing found");
                assert_eq!(names[0].expression.as_deref(), Some(id), "{text}");
                assert_eq!(
                    &text[names[0].start as usize..names[0].end as usize].is_empty(),
                    &false
                );
            }
            None => assert!(names.is_empty(), "{text}: {names:?}"),
        }
    }
}
