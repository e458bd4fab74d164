//! Results: a table on stdout, JSON, SVG charts, and the PERFORMANCE.md section.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::run::{ConnectRow, MemoryRow, Row};
use crate::targets::Target;

/// Everything one `compare` (or scenario) run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub machine: String,
    pub date: String,
    pub command: String,
    pub versions: Vec<(String, String)>,
    pub windows: Vec<Row>,
    pub memory: Vec<MemoryRow>,
    pub connect: Vec<ConnectRow>,
    pub skipped: Vec<(Target, String)>,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// A Markdown table of measured windows.
pub fn windows_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| target | subs | msgs/s | bytes | wire B/delivery | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | loss | deliveries/s | server µs/delivery | server CPU | client CPU | server RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let l = r.latency_us;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.0}% | {:.0}% | {:.0} |",
            r.target.name(),
            r.subscribers,
            r.rate,
            r.size,
            if r.wire_bytes_per_delivery > 0.0 {
                format!("{:.0}", r.wire_bytes_per_delivery)
            } else {
                "–".into()
            },
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            r.loss,
            r.deliveries_per_sec,
            r.server_us_per_delivery,
            r.server_cpu * 100.0,
            r.client_cpu * 100.0,
            r.server_rss_kib as f64 / 1024.0
        );
    }
    t
}

pub fn memory_table(rows: &[MemoryRow]) -> String {
    let mut t = String::from(
        "| target | connections | RSS idle KiB | RSS KiB | KiB per connection |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {:.2} |",
            r.target.name(),
            r.connections,
            r.rss_idle_kib,
            r.rss_kib,
            r.kib_per_connection
        );
    }
    t
}

pub fn connect_table(rows: &[ConnectRow]) -> String {
    let mut t = String::from(
        "| target | connections | failed | seconds | per second | server CPU per connection |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.2} | {:.0} | {:.1} µs |",
            r.target.name(),
            r.connections,
            r.failed,
            r.seconds,
            r.per_second,
            r.server_us_per_connection
        );
    }
    t
}

/// Ratios of signalcast to the best peer and to the reference, per window config.
pub fn ratios(rows: &[Row]) -> String {
    let mut t = String::from(
        "| window | p99: signalcast ÷ best peer | p99: signalcast ÷ reference | µs/delivery: signalcast ÷ best peer | µs/delivery: signalcast ÷ reference |\n|---|---:|---:|---:|---:|\n",
    );
    let mut keys: Vec<(String, usize, u64, usize)> = Vec::new();
    for r in rows {
        let k = (r.scenario.clone(), r.subscribers, r.rate as u64, r.size);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for (sc, subs, rate, size) in keys {
        let same: Vec<&Row> = rows
            .iter()
            .filter(|r| r.scenario == sc && r.subscribers == subs && r.rate as u64 == rate && r.size == size)
            .collect();
        let Some(sig) = same.iter().find(|r| r.target == Target::Signalcast) else { continue };
        let peers = same.iter().filter(|r| !r.target.is_signalcast() && r.target != Target::Reference);
        let best_p99 = peers.clone().filter(|r| r.loss == 0).map(|r| r.latency_us.p99).min();
        let best_cpu =
            peers.filter(|r| r.loss == 0).map(|r| r.server_us_per_delivery).fold(f64::INFINITY, f64::min);
        let reference = same.iter().find(|r| r.target == Target::Reference);
        let ratio = |a: f64, b: Option<f64>| {
            b.filter(|b| *b > 0.0).map_or("–".to_owned(), |b| format!("{:.2}", a / b))
        };
        let _ = writeln!(
            t,
            "| {sc} {subs}×{rate}/s {size} B | {} | {} | {} | {} |",
            ratio(sig.latency_us.p99 as f64, best_p99.map(|v| v as f64)),
            ratio(sig.latency_us.p99 as f64, reference.map(|r| r.latency_us.p99 as f64)),
            ratio(sig.server_us_per_delivery, best_cpu.is_finite().then_some(best_cpu)),
            ratio(sig.server_us_per_delivery, reference.map(|r| r.server_us_per_delivery)),
        );
    }
    t
}

/// Per target: the highest fan-out step with no loss, and p99 at the lowest and that step.
pub fn fanout_summary(rows: &[Row]) -> String {
    let mut t = String::from(
        "| target | subscribers | highest loss-free msgs/s | deliveries/s there | p99 ms at the lowest step | p99 ms there | server µs/delivery there |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for target in Target::ALL {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.target == target).collect();
        let Some(first) = mine.first() else { continue };
        let best = mine.iter().filter(|r| r.loss == 0).max_by(|a, b| a.rate.total_cmp(&b.rate));
        match best {
            Some(b) => {
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {:.0} | {} | {} | {:.2} |",
                    target.name(),
                    b.subscribers,
                    b.rate,
                    b.deliveries_per_sec,
                    ms(first.latency_us.p99),
                    ms(b.latency_us.p99),
                    b.server_us_per_delivery
                );
            }
            None => {
                let _ = writeln!(
                    t,
                    "| {} | {} | none | – | {} | – | – |",
                    target.name(),
                    first.subscribers,
                    ms(first.latency_us.p99)
                );
            }
        }
    }
    t
}

fn colour(t: Target) -> RGBColor {
    match t {
        Target::Signalcast => RGBColor(0xd9, 0x4f, 0x1e),
        Target::SignalcastKafka => RGBColor(0xf0, 0x9a, 0x3e),
        Target::Reference => RGBColor(0x55, 0x55, 0x55),
        Target::NodeWs => RGBColor(0x3c, 0x87, 0x3a),
        Target::Nats => RGBColor(0x27, 0x6d, 0xc2),
        Target::Nchan => RGBColor(0x8e, 0x44, 0xad),
    }
}

/// A bar chart with one group of bars per target: `groups` is (target, values), and
/// the k-th value of a group is drawn in a lighter or darker shade of its colour.
fn bar_chart(path: &Path, title: &str, y_desc: &str, groups: &[(Target, Vec<f64>)]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (820, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = groups.iter().flat_map(|(_, v)| v.iter().copied()).fold(0.01, f64::max) * 1.15;
    let names: Vec<&str> = groups.iter().map(|(t, _)| t.name()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..groups.len() as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                names.get(i).copied().unwrap_or("").to_owned()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()?;
    for (i, (target, values)) in groups.iter().enumerate() {
        let width = 0.7 / values.len().max(1) as f64;
        for (k, v) in values.iter().enumerate() {
            let x0 = i as f64 + 0.15 + k as f64 * width;
            let shade =
                if values.len() > 1 { 0.45 + 0.55 * k as f64 / (values.len() - 1) as f64 } else { 1.0 };
            let style = colour(*target).mix(shade).filled();
            chart
                .draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x0 + width * 0.92, *v)], style)))?;
        }
    }
    root.present()?;
    Ok(())
}

/// Grouped bars: p50, p99, p99.9 (ms) per target for one window configuration.
pub fn latency_chart(path: &Path, title: &str, rows: &[&Row]) -> anyhow::Result<()> {
    let groups: Vec<(Target, Vec<f64>)> = rows
        .iter()
        .map(|r| {
            let l = r.latency_us;
            (r.target, [l.p50, l.p99, l.p999].iter().map(|v| *v as f64 / 1000.0).collect())
        })
        .collect();
    bar_chart(path, title, "latency ms (p50, p99, p99.9)", &groups)
}

/// Lines over the rate steps of a fan-out run: one value per target and rate.
pub fn fanout_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    rows: &[Row],
    value: fn(&Row) -> f64,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (820, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_rate = rows.iter().map(|r| r.rate).fold(1.0, f64::max);
    let max_y = rows.iter().map(value).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_rate * 1.05, 0.0..max_y.max(1e-6))?;
    chart.configure_mesh().x_desc("published msgs/s").y_desc(y_desc).draw()?;
    for t in Target::ALL {
        let pts: Vec<(f64, f64)> =
            rows.iter().filter(|r| r.target == t).map(|r| (r.rate, value(r))).collect();
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), colour(t).stroke_width(2)))?
            .label(t.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour(t).stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour(t).filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Bars of KiB per idle connection, per target, at the largest count measured.
pub fn memory_chart(path: &Path, rows: &[MemoryRow]) -> anyhow::Result<()> {
    let Some(n) = rows.iter().map(|r| r.connections).max() else { return Ok(()) };
    let groups: Vec<(Target, Vec<f64>)> =
        rows.iter().filter(|r| r.connections == n).map(|r| (r.target, vec![r.kib_per_connection])).collect();
    bar_chart(
        path,
        &format!("server RSS per idle connection at {n} connections"),
        "KiB per connection",
        &groups,
    )
}

/// Replaces the text between `<!-- bench:begin -->` and `<!-- bench:end -->` (appends
/// the block if absent).
pub fn splice(doc: &str, body: &str) -> String {
    const BEGIN: &str = "<!-- bench:begin -->";
    const END: &str = "<!-- bench:end -->";
    let block = format!("{BEGIN}\n{body}\n{END}");
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &doc[..b], block, &doc[e + END.len()..]),
        _ => format!("{}\n\n{}\n", doc.trim_end(), block),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_or_appends() {
        assert_eq!(
            splice("a\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nz", "new"),
            "a\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\nz"
        );
        assert!(splice("doc", "x").ends_with("<!-- bench:begin -->\nx\n<!-- bench:end -->\n"));
    }
}
