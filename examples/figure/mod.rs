//! Shared by the bench examples: every figure is printed as a Markdown table
//! and drawn as a small SVG chart in `target/bench/`, both naming the machine
//! it was measured on and saying how far absolute numbers can be trusted.
//! The SVG writer is ours (a few lines per chart kind); no plotting crate.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::PathBuf;

/// Said under every table and on every chart.
pub const CAVEAT: &str = "Absolute times (TCG guests, a shared machine) are not production \
     figures; ratios and growth curves are what compare.";

/// Where the figures were measured.
pub struct Machine {
    pub host: String,
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU".into(), |(_, v)| v.trim().to_string());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1);
        Machine {
            host: read("/proc/sys/kernel/hostname").trim().to_string(),
            cpu,
            cores,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "machine: {}, {}, {} cores, kernel {}",
            self.host, self.cpu, self.cores, self.kernel
        )
    }
}

/// A table: title, notes (how it was measured, goals), columns, rows.
pub struct Table {
    pub title: String,
    pub notes: Vec<String>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Table {
        Table {
            title: title.into(),
            notes: Vec::new(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Table {
        self.notes.push(note.into());
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Numeric x; one polyline per series.
    Lines { log2_x: bool },
    /// Categories on x; one bar per series in each group.
    Bars,
}

pub struct Series {
    pub name: String,
    /// (x, y); for bars x is the category index.
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    /// File name without `.svg`.
    pub file: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub kind: Kind,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    /// A dashed horizontal reference line (a goal) and its label.
    pub goal: Option<(f64, String)>,
}

impl Chart {
    pub fn lines(file: &str, title: &str, x_label: &str, y_label: &str, log2_x: bool) -> Chart {
        Chart {
            file: file.into(),
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            kind: Kind::Lines { log2_x },
            categories: Vec::new(),
            series: Vec::new(),
            goal: None,
        }
    }

    pub fn bars(file: &str, title: &str, y_label: &str, categories: &[&str]) -> Chart {
        Chart {
            file: file.into(),
            title: title.into(),
            x_label: String::new(),
            y_label: y_label.into(),
            kind: Kind::Bars,
            categories: categories.iter().map(|c| c.to_string()).collect(),
            series: Vec::new(),
            goal: None,
        }
    }

    pub fn series(mut self, name: &str, points: Vec<(f64, f64)>) -> Chart {
        self.series.push(Series {
            name: name.into(),
            points,
        });
        self
    }

    /// Bars: one value per category, in category order.
    pub fn bar_series(self, name: &str, values: &[f64]) -> Chart {
        let points = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64, *v))
            .collect();
        self.series(name, points)
    }

    pub fn goal(mut self, y: f64, label: &str) -> Chart {
        self.goal = Some((y, label.into()));
        self
    }
}

/// Prints tables and writes charts for one bench program; `finish` lists
/// the SVG files.
pub struct Report {
    pub machine: Machine,
    dir: PathBuf,
    written: Vec<PathBuf>,
}

impl Report {
    pub fn new() -> Report {
        let dir = bench_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Report {
            machine: Machine::detect(),
            dir,
            written: Vec::new(),
        }
    }

    pub fn table(&self, t: &Table) {
        println!("\n### {}\n", t.title);
        println!("{}", self.machine.line());
        println!("{CAVEAT}");
        for n in &t.notes {
            println!("{n}");
        }
        println!();
        println!("| {} |", t.columns.join(" | "));
        println!("|{}", "---|".repeat(t.columns.len()));
        for r in &t.rows {
            println!("| {} |", r.join(" | "));
        }
    }

    pub fn chart(&mut self, c: &Chart) -> PathBuf {
        let path = self.dir.join(format!("{}.svg", c.file));
        std::fs::write(&path, svg(c, &self.machine))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("chart: {}", path.display());
        self.written.push(path.clone());
        path
    }

    pub fn finish(&self) {
        println!("\nSVG charts written:");
        for p in &self.written {
            println!("  {}", p.display());
        }
    }
}

/// `target/bench`, found from the running example
/// (target/PROFILE/examples/NAME), so CARGO_TARGET_DIR is honoured.
fn bench_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("bench")))
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

// --- formatting helpers ---------------------------------------------------

/// A number with about three significant digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if (v.fract() == 0.0 && a < 1e15) || a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Sorted samples: the p-th percentile (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

// --- SVG ---------------------------------------------------------------------

const W: f64 = 800.0;
const H: f64 = 500.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 110.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" tick step (1, 2, 2.5 or 5 times a power of ten) giving about
/// five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// A y tick with as many decimals as the step needs (0.25 -> "0.75").
fn tick_label(v: f64, step: f64) -> String {
    let mut d = 0;
    while d < 6 && ((step * 10f64.powi(d)).fract()).abs() > 1e-6 {
        d += 1;
    }
    format!("{v:.*}", d as usize)
}

fn svg(c: &Chart, m: &Machine) -> String {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" font-size="17" text-anchor="middle" font-weight="bold">{}</text>"#,
        W / 2.0,
        esc(&c.title)
    );

    // y axis: from 0 to a nice bound above every value and the goal.
    let ys = c.series.iter().flat_map(|se| se.points.iter().map(|p| p.1));
    let y_max = ys
        .chain(c.goal.as_ref().map(|g| g.0))
        .fold(0.0f64, f64::max);
    let step = tick_step(if y_max > 0.0 { y_max } else { 1.0 });
    let top = (y_max / step).ceil().max(1.0) * step;
    let y_of = |v: f64| TOP + ph - v / top * ph;
    let mut t = 0.0;
    while t <= top + step / 1e6 {
        let y = y_of(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            tick_label(t, step)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(20,{:.1}) rotate(-90)" font-size="13" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        esc(&c.y_label)
    );

    match c.kind {
        Kind::Lines { log2_x } => lines(&mut s, c, log2_x, pw, &y_of),
        Kind::Bars => bars(&mut s, c, pw, &y_of),
    }
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="black"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        TOP + ph,
        TOP + ph,
        LEFT + pw,
        TOP + ph
    );
    if let Some((g, _)) = &c.goal {
        let y = y_of(*g);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#555" stroke-dasharray="6,4"/>"##,
            LEFT + pw
        );
    }

    // Legend: one row under the x axis label, so it never hides data.
    let mut x = LEFT;
    let y = H - BOTTOM + 58.0;
    for (i, se) in c.series.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="14" height="10" fill="{}"/><text x="{:.1}" y="{y:.1}" font-size="12">{}</text>"#,
            y - 10.0,
            COLORS[i % COLORS.len()],
            x + 19.0,
            esc(&se.name)
        );
        x += 34.0 + 6.8 * se.name.chars().count() as f64;
    }
    if let Some((_, label)) = &c.goal {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="6,4"/><text x="{:.1}" y="{y:.1}" font-size="12" fill="#555">{}</text>"##,
            y - 4.0,
            x + 22.0,
            y - 4.0,
            x + 27.0,
            esc(label)
        );
    }

    // Footer: the machine and the caveat.
    let _ = writeln!(
        s,
        r##"<text x="10" y="{:.1}" font-size="11" fill="#444">{}</text><text x="10" y="{:.1}" font-size="11" fill="#444">{}</text>"##,
        H - 26.0,
        esc(&m.line()),
        H - 10.0,
        esc(CAVEAT)
    );
    s.push_str("</svg>\n");
    s
}

fn lines(s: &mut String, c: &Chart, log2_x: bool, pw: f64, y_of: &dyn Fn(f64) -> f64) {
    let tx = |x: f64| if log2_x { x.max(1e-9).log2() } else { x };
    let mut xs: Vec<f64> = c
        .series
        .iter()
        .flat_map(|se| se.points.iter().map(|p| p.0))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (lo, hi) = match (xs.first(), xs.last()) {
        (Some(a), Some(b)) if tx(*b) > tx(*a) => (tx(*a), tx(*b)),
        (Some(a), _) => (tx(*a) - 1.0, tx(*a) + 1.0),
        _ => (0.0, 1.0),
    };
    // A margin so the end points are not on the frame.
    let pad = (hi - lo) * 0.05;
    let x_of = |x: f64| LEFT + (tx(x) - lo + pad) / (hi - lo + 2.0 * pad) * pw;
    let base = H - BOTTOM;
    // Ticks at the measured x values.
    for x in &xs {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            x_of(*x),
            base + 18.0,
            num(*x)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        base + 40.0,
        esc(&format!(
            "{}{}",
            c.x_label,
            if log2_x { " (log scale)" } else { "" }
        ))
    );
    for (i, se) in c.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", x_of(*x), y_of(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            pts.join(" ")
        );
        // Value labels only where they do not pile up (the table has them all).
        let labels = c.series.len() <= 3;
        for (x, y) in &se.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                x_of(*x),
                y_of(*y)
            );
            if !labels {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="{color}">{}</text>"#,
                x_of(*x),
                y_of(*y) - 8.0,
                num(*y)
            );
        }
    }
}

fn bars(s: &mut String, c: &Chart, pw: f64, y_of: &dyn Fn(f64) -> f64) {
    let groups = c.categories.len().max(1) as f64;
    let per = c.series.len().max(1) as f64;
    let group_w = pw / groups;
    let bar_w = group_w * 0.7 / per;
    let base = H - BOTTOM;
    for (g, cat) in c.categories.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            LEFT + group_w * (g as f64 + 0.5),
            base + 18.0,
            esc(cat)
        );
    }
    for (i, se) in c.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (x, y) in &se.points {
            let bx = LEFT + group_w * x + group_w * 0.15 + bar_w * i as f64;
            let top = y_of(*y);
            let _ = writeln!(
                s,
                r#"<rect x="{bx:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                bar_w - 2.0,
                (base - top).max(0.0),
                bx + bar_w / 2.0 - 1.0,
                top - 4.0,
                num(*y)
            );
        }
    }
}
