//! The runs' figures as Markdown tables (`controller-scale.md`), and every
//! run in one file (`controller-scale.json`) for the plot.
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

const MIB: f64 = 1024.0 * 1024.0;

pub fn write(out: &Path, sizes: &[usize]) {
    let load = |mode: &str, n: usize| -> Option<Value> {
        let text = std::fs::read(out.join(format!("controller-scale-{mode}-{n}.json"))).ok()?;
        serde_json::from_slice(&text).ok()
    };
    let runs: Vec<(usize, Option<Value>, Option<Value>)> = sizes
        .iter()
        .map(|&n| (n, load("floor", n), load("controller", n)))
        .collect();
    let mut md = String::new();

    md.push_str(
        "#### Convergence: claims created at once until every claim's children exist and its status is written\n\n",
    );
    md.push_str("| claims | namespaces | floor: a plain client creates the 4 children per claim | controller: children + status | ratio | floor: every Deployment available (pods Ready through KWOK) | controller: every claim says DeploymentAvailable | ratio, until available | controller's last write | claims created by the driver in |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (n, floor, ctl) in &runs {
        let floor_s = floor.as_ref().map(|f| f["seen_s"].as_f64().unwrap_or(f64::NAN));
        let ctl_s = ctl.as_ref().map(|c| c["converged_s"].as_f64().unwrap_or(f64::NAN));
        let ratio = |floor: Option<f64>, ctl: Option<f64>| match (floor, ctl) {
            (Some(f), Some(c)) => format!("{:.2}×", c / f),
            _ => "-".into(),
        };
        let floor_available = floor.as_ref().and_then(|f| f["available_s"].as_f64());
        let ctl_available = ready_at(ctl.as_ref(), *n);
        let unfinished = ctl
            .as_ref()
            .is_some_and(|c| c["converged_all"] == false)
            .then_some(" (not all converged)")
            .unwrap_or_default();
        writeln!(
            md,
            "| {n} | {} | {} | {}{unfinished} | {} | {} | {} | {} | {} | {} |",
            ctl.as_ref()
                .or(floor.as_ref())
                .map_or("-".into(), |r| r["namespaces"].to_string()),
            secs(floor_s),
            secs(ctl_s),
            ratio(floor_s, ctl_s),
            secs(floor_available),
            ready(ctl.as_ref(), *n),
            ratio(floor_available, ctl_available),
            secs(ctl.as_ref().and_then(|c| c["settled_s"].as_f64())),
            secs(ctl.as_ref().and_then(|c| c["created_s"].as_f64())),
        )
        .unwrap();
    }

    md.push_str(
        "\n#### API requests per claim until the controller's last write (audit log), by verb and resource\n\n",
    );
    let keys: BTreeSet<String> = runs
        .iter()
        .flat_map(|(_, f, c)| {
            let mut keys: Vec<String> = Vec::new();
            if let Some(c) = c {
                keys.extend(object_keys(&c["requests"]["converge"]));
            }
            if let Some(f) = f {
                keys.extend(object_keys(&f["requests"]));
            }
            keys
        })
        .collect();
    verb_table_header(&mut md, "verb resource", runs.iter().map(|(n, _, _)| *n));
    for key in keys.iter().chain(std::iter::once(&"writes".to_string())) {
        write!(md, "| {key} |").unwrap();
        for (n, _, c) in &runs {
            let v = c.as_ref().map(|c| per_claim(&c["requests"]["converge"], key, *n));
            write!(md, " {} |", per(v)).unwrap();
        }
        for (n, f, _) in &runs {
            let v = f.as_ref().map(|f| per_claim(&f["requests"], key, *n));
            write!(md, " {} |", per(v)).unwrap();
        }
        md.push('\n');
    }

    md.push_str(
        "\n#### Write latency by verb and resource, until the controller's last write: p50 / p99, arrival to answer by the API server's own timestamps\n\n",
    );
    let latency_keys: BTreeSet<String> = runs
        .iter()
        .flat_map(|(_, f, c)| {
            [f, c]
                .into_iter()
                .flatten()
                .flat_map(|r| object_keys(&r["write_latency_s"]))
                .filter(|k| !k.ends_with(" leases"))
                .collect::<Vec<_>>()
        })
        .collect();
    verb_table_header(&mut md, "verb resource", runs.iter().map(|(n, _, _)| *n));
    let latency = |run: &Option<Value>, key: &str| -> String {
        let l = run.as_ref().map(|r| &r["write_latency_s"][key]);
        match l.and_then(|l| Some((l[1].as_f64()?, l[2].as_f64()?))) {
            Some((p50, p99)) => format!("{} / {}", ms(Some(p50)), ms(Some(p99))),
            None => "-".into(),
        }
    };
    for key in &latency_keys {
        write!(md, "| {key} |").unwrap();
        for (_, _, c) in &runs {
            write!(md, " {} |", latency(c, key)).unwrap();
        }
        for (_, f, _) in &runs {
            write!(md, " {} |", latency(f, key)).unwrap();
        }
        md.push('\n');
    }

    md.push_str("\n#### The whole machine until convergence: CPU per claim by process, in milliseconds (every process of the run, on the same two cores)\n\n");
    machine_table(&mut md, &runs, "process", "cpu_seconds", 1000.0, 0.05, |v| {
        format!("{v:.1}")
    });
    write!(md, "| cores busy (all ÷ the seconds between the readings) |").unwrap();
    for (_, run) in columns(&runs) {
        let busy = run.as_ref().and_then(|r| {
            let machine = &r["machine"];
            Some(sum_values(&machine["cpu_seconds"]) / machine["seconds"].as_f64()?)
        });
        write!(md, " {} |", busy.map_or("-".into(), |b| format!("{b:.2}"))).unwrap();
    }
    md.push_str(
        "\n\n#### The API server's requests per claim until convergence, from its own metrics (every client: the controller manager, the scheduler and KWOK too)\n\n",
    );
    machine_table(&mut md, &runs, "verb resource", "requests", 1.0, 0.05, |v| per(Some(v)));

    md.push_str("\n#### The controller: memory, CPU, reconciles, idle resync\n\n");
    md.push_str("| claims | RSS before | RSS converged | RSS peak | RSS after the idle window | RSS growth per claim | CPU to converge | CPU while idle | reconciles to converge (per claim) | reconciles in the idle window (per claim) | writes in the idle window (claims, children, events) | Lease requests in it | /metrics samples |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (n, _, c) in &runs {
        let Some(c) = c else { continue };
        let p = &c["proc"];
        let rss = |k: &str| p[k]["rss_bytes"].as_f64().unwrap_or(0.0);
        let cpu = |k: &str| p[k]["cpu_seconds"].as_f64().unwrap_or(0.0);
        let peak = p["samples"]
            .as_array()
            .map(|s| s.iter().filter_map(|x| x["rss_bytes"].as_f64()).fold(0.0, f64::max))
            .unwrap_or(0.0);
        let idle_s = c["idle_window_s"].as_f64().unwrap_or(1.0);
        let idle = &c["requests"]["idle"];
        let idle_writes: f64 = object_keys(idle)
            .iter()
            .filter(|k| is_write(k) && !k.ends_with(" leases"))
            .map(|k| idle[k].as_f64().unwrap_or(0.0))
            .sum();
        let lease: f64 = object_keys(idle)
            .iter()
            .filter(|k| is_write(k) && k.ends_with(" leases"))
            .map(|k| idle[k].as_f64().unwrap_or(0.0))
            .sum();
        let rec = &c["reconciles"];
        let nf = *n as f64;
        writeln!(
            md,
            "| {n} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.1} s | {:.3} cores | {:.0} ({:.1}) | {:.0} ({:.2}) | {} | {} | {} |",
            rss("start") / MIB,
            rss("converged") / MIB,
            peak / MIB,
            rss("idle_to") / MIB,
            (rss("idle_to") - rss("start")) / nf / 1024.0,
            cpu("converged") - cpu("start"),
            (cpu("idle_to") - cpu("idle_from")) / idle_s,
            rec["converge"].as_f64().unwrap_or(0.0),
            rec["converge"].as_f64().unwrap_or(0.0) / nf,
            rec["idle"].as_f64().unwrap_or(0.0),
            rec["idle"].as_f64().unwrap_or(0.0) / nf,
            idle_writes as u64,
            lease as u64,
            c["metric_series"],
        )
        .unwrap();
    }

    md.push_str("\n#### One claim's change (a new image) until its Deployment shows it\n\n");
    md.push_str("| claims | changes | p50 | p99 | max |\n|---:|---:|---:|---:|---:|\n");
    for (n, _, c) in &runs {
        let Some(c) = c else { continue };
        let mut l: Vec<f64> = c["change_latency_s"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        l.sort_by(f64::total_cmp);
        writeln!(
            md,
            "| {n} | {} | {} | {} | {} |",
            l.len(),
            ms(quantile(&l, 0.5)),
            ms(quantile(&l, 0.99)),
            ms(l.last().copied())
        )
        .unwrap();
    }

    md.push_str("\n#### What the controller's caches hold, per object: as JSON, and in its memory\n\n");
    md.push_str("Heap bytes as glibc's malloc hands them out, for objects built from the same JSON: the claims as the controller caches them (without managedFields), the children as it caches them now (metadata, and the rest as compact JSON text) and as it cached them before (`DynamicObject` trees).\n\n");
    md.push_str("| claims | cache | objects | JSON bytes per object | JSON total | heap bytes per object, as cached | heap total | heap bytes per object as a tree (before) |\n|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for (n, _, c) in &runs {
        let Some(c) = c else { continue };
        for kind in object_keys(&c["stores"]) {
            let s = &c["stores"][&kind];
            let objects = s["objects"].as_f64().unwrap_or(0.0);
            let heap = s["heap_bytes_per_object"].as_f64();
            writeln!(
                md,
                "| {n} | {kind} | {} | {:.0} | {:.1} MiB | {} | {} | {} |",
                s["objects"],
                s["bytes_per_object"].as_f64().unwrap_or(0.0),
                s["total_bytes"].as_f64().unwrap_or(0.0) / MIB,
                heap.map_or("-".into(), |h| format!("{h:.0}")),
                heap.map_or("-".into(), |h| format!("{:.1} MiB", h * objects / MIB)),
                s["tree_heap_bytes_per_object"]
                    .as_f64()
                    .map_or("-".into(), |h| format!("{h:.0}")),
            )
            .unwrap();
        }
    }

    print!("{md}");
    std::fs::write(out.join("controller-scale.md"), &md).expect("writing controller-scale.md");
    let all: Vec<Value> = runs
        .into_iter()
        .map(|(n, floor, controller)| json!({"n": n, "floor": floor, "controller": controller}))
        .collect();
    std::fs::write(
        out.join("controller-scale.json"),
        serde_json::to_vec(&json!({ "runs": all })).unwrap(),
    )
    .expect("writing controller-scale.json");
    println!("results in {}", out.display());
}

fn object_keys(v: &Value) -> Vec<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn is_write(key: &str) -> bool {
    ["create ", "update ", "patch ", "delete "]
        .iter()
        .any(|v| key.starts_with(v))
}

/// Requests of `key` per claim; `writes` sums every write.
fn per_claim(counts: &Value, key: &str, n: usize) -> f64 {
    let total: f64 = if key == "writes" {
        object_keys(counts)
            .iter()
            .filter(|k| is_write(k))
            .map(|k| counts[k].as_f64().unwrap_or(0.0))
            .sum()
    } else {
        counts[key].as_f64().unwrap_or(0.0)
    };
    total / n as f64
}

fn per(v: Option<f64>) -> String {
    match v {
        Some(v) if v == 0.0 => "0".into(),
        Some(v) if v < 0.01 => format!("{v:.4}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} s"))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.0} ms", v * 1000.0))
}

/// The nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// When the last claim's Deployment became available, or how many did.
fn ready(run: Option<&Value>, n: usize) -> String {
    let Some(times) = run.and_then(|r| r["ready_curve"].as_array()) else {
        return "-".into();
    };
    match ready_at(run, n) {
        Some(last) => secs(Some(last)),
        None => format!("{} of {n}", times.len()),
    }
}

/// When the last of `n` claims' Deployments became available; `None` if
/// fewer did.
fn ready_at(run: Option<&Value>, n: usize) -> Option<f64> {
    let times = run?["ready_curve"].as_array()?;
    if times.len() < n {
        return None;
    }
    times.last()?.as_f64()
}

/// The runs in the order of a table's columns ([`verb_table_header`]): each
/// controller run, then each floor run, with its N.
fn columns(runs: &[(usize, Option<Value>, Option<Value>)]) -> Vec<(usize, &Option<Value>)> {
    runs.iter()
        .map(|(n, _, c)| (*n, c))
        .chain(runs.iter().map(|(n, f, _)| (*n, f)))
        .collect()
}

/// A table of what `machine.<field>` of each run holds, per claim and times
/// `scale`: a row per key that reaches `least` in some run, then their sum
/// over every key as `all`; the columns as [`verb_table_header`]'s.
fn machine_table(
    md: &mut String,
    runs: &[(usize, Option<Value>, Option<Value>)],
    rows_are: &str,
    field: &str,
    scale: f64,
    least: f64,
    show: impl Fn(f64) -> String,
) {
    let columns = columns(runs);
    let value = |run: &Option<Value>, n: usize, key: Option<&str>| -> Option<f64> {
        let machine = &run.as_ref()?["machine"];
        if machine.is_null() {
            return None;
        }
        let counts = &machine[field];
        let total = match key {
            Some(key) => counts[key].as_f64().unwrap_or(0.0),
            None => sum_values(counts),
        };
        Some(total * scale / n as f64)
    };
    let keys: BTreeSet<String> = columns
        .iter()
        .flat_map(|(_, run)| {
            run.as_ref()
                .map(|r| object_keys(&r["machine"][field]))
                .unwrap_or_default()
        })
        .collect();
    let mut rows: Vec<(String, Vec<Option<f64>>)> = keys
        .iter()
        .map(|key| {
            let values = columns.iter().map(|(n, run)| value(run, *n, Some(key))).collect();
            (key.clone(), values)
        })
        .filter(|(_, values): &(String, Vec<Option<f64>>)| values.iter().flatten().any(|v| *v >= least))
        .collect();
    rows.push((
        "all".into(),
        columns.iter().map(|(n, run)| value(run, *n, None)).collect(),
    ));
    verb_table_header(md, rows_are, runs.iter().map(|(n, _, _)| *n));
    for (key, values) in rows {
        write!(md, "| {key} |").unwrap();
        for v in values {
            write!(md, " {} |", v.map_or("-".into(), &show)).unwrap();
        }
        md.push('\n');
    }
}

fn sum_values(v: &Value) -> f64 {
    v.as_object()
        .map(|o| o.values().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0)
}

/// The header of a table by `rows_are` (verb and resource, process): a
/// column per controller run, then one per floor run, for each N.
fn verb_table_header(md: &mut String, rows_are: &str, sizes: impl Iterator<Item = usize> + Clone) {
    write!(md, "| {rows_are} |").unwrap();
    for n in sizes.clone() {
        write!(md, " controller, {n} |").unwrap();
    }
    for n in sizes.clone() {
        write!(md, " floor, {n} |").unwrap();
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(2 * sizes.count()));
    md.push('\n');
}
