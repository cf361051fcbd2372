//! The outputs of `strata compare`: the terminal table, the JSON, one SVG
//! bar chart per workload, and a Markdown report embedding the charts.

use super::Results;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use strata_benches::workloads::{Figure, Workload};

/// A one-line summary of a figure, for progress output.
pub fn line(target: &str, f: &Figure) -> String {
    let mut s = format!("{target}: {} {}", f.figure, secs(f.seconds));
    if let (Some(r), Some(x)) = (&f.reference, f.ratio()) {
        let _ = write!(s, " ({}: {}, {x:.2}x)", r.name, secs(r.seconds));
    }
    s
}

fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

const HEAD: [&str; 8] = [
    "target",
    "figure",
    "time",
    "reference",
    "ref time",
    "ratio",
    "peak RSS",
    "what",
];

fn table_rows(r: &Results) -> Vec<[String; 8]> {
    r.rows
        .iter()
        .map(|row| {
            let f = &row.figure;
            [
                row.target.clone(),
                f.figure.clone(),
                secs(f.seconds),
                f.reference.as_ref().map_or("-".into(), |x| x.name.clone()),
                f.reference.as_ref().map_or("-".into(), |x| secs(x.seconds)),
                row.ratio.map_or("-".into(), |x| format!("{x:.2}x")),
                mib(f.peak_rss_kib),
                f.detail.clone(),
            ]
        })
        .collect()
}

fn not_run_lines(r: &Results) -> Vec<String> {
    let mut v = Vec::new();
    for t in &r.targets {
        if !t.run {
            v.push(format!(
                "{}: not run: {}",
                t.name,
                t.reason.as_deref().unwrap_or("unknown reason")
            ));
        }
        for (w, e) in &t.errors {
            v.push(format!("{}: {w} failed: {e}", t.name));
        }
    }
    let cs = &r.containers_storage;
    if let Some(why) = &cs.reason {
        v.push(format!("containers-storage: not run: {why}"));
    }
    for (w, e) in &cs.errors {
        v.push(format!("containers-storage {w} failed: {e}"));
    }
    v
}

/// The terminal table, with its header lines and the not-run list.
pub fn table(r: &Results) -> String {
    let rows = table_rows(r);
    let mut width = HEAD.map(str::len);
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "strata compare, size {} ({} files, {} MB rootfs), {}",
        r.size,
        r.rootfs_files,
        r.rootfs_bytes >> 20,
        r.host
    );
    let _ = writeln!(
        s,
        "ratio = time / reference time (1.00x = as fast as the reference; lower is better)"
    );
    let fmt_row = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = width[i]);
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(s, "{}", fmt_row(HEAD.to_vec()));
    for row in &rows {
        let _ = writeln!(s, "{}", fmt_row(row.iter().map(String::as_str).collect()));
    }
    for l in not_run_lines(r) {
        let _ = writeln!(s, "{l}");
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart of one workload: per target and figure a bar of
/// its time and, under it, a grey bar of its reference.
pub fn svg(r: &Results, w: Workload) -> Option<String> {
    let rows: Vec<_> = r
        .rows
        .iter()
        .filter(|x| x.figure.workload == w.name())
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut bars: Vec<(String, f64, bool)> = Vec::new();
    for row in &rows {
        let f = &row.figure;
        let label = if f.figure == w.name() {
            row.target.clone()
        } else {
            format!("{} {}", row.target, f.figure)
        };
        bars.push((label, f.seconds, false));
        if let Some(x) = &f.reference {
            bars.push((format!("  ref: {}", x.name), x.seconds, true));
        }
    }
    let max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9);
    let (left, plot, bar_h, gap, top) = (230.0, 460.0, 16.0, 6.0, 40.0);
    let height = top + bars.len() as f64 * (bar_h + gap) + 20.0;
    let width = left + plot + 120.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">{} (size {}): seconds, lower is better</text>"#,
        esc(w.name()),
        esc(&r.size)
    );
    for (i, (label, v, is_ref)) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let len = (v / max * plot).max(1.0);
        let color = if *is_ref { "#b0b0b0" } else { "#3b6fb6" };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + bar_h - 4.0,
            esc(label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{y:.1}" width="{len:.1}" height="{bar_h}" fill="{color}"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            left + len + 6.0,
            y + bar_h - 4.0,
            esc(&secs(*v))
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

/// The Markdown report: the table, what did not run, the charts.
pub fn markdown(r: &Results, charts: &[(Workload, String)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# strata compare\n");
    let _ = writeln!(
        s,
        "Size `{}`: a generated rootfs of {} files, {} MB. Host: {}.\n",
        r.size,
        r.rootfs_files,
        r.rootfs_bytes >> 20,
        r.host
    );
    let _ = writeln!(
        s,
        "Each figure is the time of the strata work; its reference ran in the same \
         run on the same filesystem; ratio = time / reference time (lower is better). \
         Peak RSS is this process's high-water mark during the workload (limit {} MiB).\n",
        r.peak_rss_limit_kib / 1024
    );
    let _ = writeln!(s, "| {} |", HEAD.join(" | "));
    let _ = writeln!(s, "|{}", " --- |".repeat(HEAD.len()));
    for row in table_rows(r) {
        let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    let notes = not_run_lines(r);
    if !notes.is_empty() {
        let _ = writeln!(s, "\n## Not run or failed\n");
        for l in notes {
            let _ = writeln!(s, "- {l}");
        }
    }
    let _ = writeln!(s, "\n## Targets\n");
    for t in &r.targets {
        let _ = writeln!(
            s,
            "- `{}`: driver `{}` on {}{}",
            t.name,
            t.driver,
            t.backing,
            if t.run { "" } else { " (not run)" }
        );
    }
    if let Some(v) = &r.containers_storage.version {
        let _ = writeln!(
            s,
            "- `cs-overlay`, `cs-vfs`, `cs-btrfs`: containers-storage ({v}), one process per step"
        );
    }
    let _ = writeln!(s, "\n## Charts\n");
    for (w, file) in charts {
        let _ = writeln!(s, "### {}\n\n![{}]({file})\n", w.name(), w.name());
    }
    s
}

/// Writes `table.txt`, `compare.json`, `<workload>.svg` and `report.md` to
/// `out`, and prints the table (or, with `json`, the JSON) on stdout.
///
/// # Errors
/// Writing a file or stdout.
pub fn write_all(r: &Results, out: &Path, json: bool) -> Result<()> {
    let write = |name: &str, text: &str| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))
    };
    let table = table(r);
    write("table.txt", &table)?;
    let js = serde_json::to_string_pretty(r).context("serialise the results")?;
    write("compare.json", &js)?;
    let mut charts = Vec::new();
    for w in Workload::ALL {
        if let Some(svg) = svg(r, w) {
            let file = format!("{}.svg", w.name());
            write(&file, &svg)?;
            charts.push((w, file));
        }
    }
    write("report.md", &markdown(r, &charts))?;
    if json {
        println!("{js}");
    } else {
        print!("{table}");
        println!(
            "written: {}/{{table.txt,compare.json,report.md,*.svg}}",
            out.display()
        );
    }
    Ok(())
}
