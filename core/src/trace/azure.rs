//! The Azure Functions 2019 trace layout, as serverless loaders use it: a directory with
//! `invocations.csv`, `durations.csv` and (optionally) `memory.csv`.
//!
//! - invocations: `HashOwner,HashApp,HashFunction,Trigger,1,2,...,N` (invocations per minute)
//! - durations: `HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,
//!   percentile_Average_{0,1,25,50,75,99,100}` (milliseconds)
//! - memory: `HashOwner,HashApp,SampleCount,AverageAllocatedMb,
//!   AverageAllocatedMb_pct{1,5,25,50,75,95,99,100}` (per application)
//!
//! Columns are found by name, so their order may vary. A malformed file is an error that names
//! the file, the line and the column.

use std::collections::HashMap;

use super::{Percentiles, Trace, TraceError, TraceFunction};

/// Levels of the duration percentile columns.
const DURATION_LEVELS: [(&str, f64); 7] = [
    ("percentile_Average_0", 0.0),
    ("percentile_Average_1", 0.01),
    ("percentile_Average_25", 0.25),
    ("percentile_Average_50", 0.50),
    ("percentile_Average_75", 0.75),
    ("percentile_Average_99", 0.99),
    ("percentile_Average_100", 1.0),
];

/// Levels of the memory percentile columns (the lowest one also stands for level 0).
const MEMORY_LEVELS: [(&str, f64); 8] = [
    ("AverageAllocatedMb_pct1", 0.01),
    ("AverageAllocatedMb_pct5", 0.05),
    ("AverageAllocatedMb_pct25", 0.25),
    ("AverageAllocatedMb_pct50", 0.50),
    ("AverageAllocatedMb_pct75", 0.75),
    ("AverageAllocatedMb_pct95", 0.95),
    ("AverageAllocatedMb_pct99", 0.99),
    ("AverageAllocatedMb_pct100", 1.0),
];

/// A parsed CSV: header names and rows, with the file name for error messages.
struct Table<'a> {
    file: &'a str,
    header: Vec<&'a str>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Table<'a> {
    fn parse(file: &'a str, text: &'a str) -> Result<Table<'a>, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or_else(|| TraceError::new(file, 1, "the file is empty (no header line)"))?;
        let header: Vec<&str> = header.split(',').map(str::trim).collect();
        let mut rows = Vec::new();
        for (line, text) in lines {
            let fields: Vec<&str> = text.split(',').map(str::trim).collect();
            if fields.len() != header.len() {
                return Err(TraceError::new(
                    file,
                    line,
                    format!("{} fields where the header has {}", fields.len(), header.len()),
                ));
            }
            rows.push((line, fields));
        }
        Ok(Table { file, header, rows })
    }

    fn column(&self, name: &str) -> Result<usize, TraceError> {
        self.header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| TraceError::new(self.file, 1, format!("no column {name:?} in the header")))
    }

    fn number<T: std::str::FromStr>(
        &self,
        line: usize,
        row: &[&str],
        column: usize,
        what: &str,
    ) -> Result<T, TraceError> {
        row[column].parse().map_err(|_| {
            TraceError::new(
                self.file,
                line,
                format!("column {:?} is {:?}, expected {what}", self.header[column], row[column]),
            )
        })
    }

    fn percentiles(&self, line: usize, row: &[&str], levels: &[(&str, f64)]) -> Result<Percentiles, TraceError> {
        let mut points = Vec::with_capacity(levels.len() + 1);
        for (name, level) in levels {
            let value: f64 = self.number(line, row, self.column(name)?, "a number")?;
            if !value.is_finite() || value < 0.0 {
                return Err(TraceError::new(
                    self.file,
                    line,
                    format!("column {name:?} is {value}, expected a number ≥ 0"),
                ));
            }
            points.push((*level, value));
        }
        if points[0].0 > 0.0 {
            points.insert(0, (0.0, points[0].1));
        }
        Percentiles::new(points).map_err(|e| TraceError::new(self.file, line, e))
    }
}

/// Parses the three files of a trace directory. `memory` is optional: without it invocations
/// ask for no memory. Functions without durations are left out (as loaders do) and counted.
pub fn parse(invocations: &str, durations: &str, memory: Option<&str>) -> Result<(Trace, usize), TraceError> {
    let memory_by_app = match memory {
        Some(text) => parse_memory(text)?,
        None => HashMap::new(),
    };
    let durations = parse_durations(durations)?;

    let table = Table::parse("invocations.csv", invocations)?;
    let owner = table.column("HashOwner")?;
    let app = table.column("HashApp")?;
    let function = table.column("HashFunction")?;
    let trigger = table.column("Trigger")?;
    // Minute columns are named 1..=N, in order.
    let minute_columns: Vec<usize> = (1..).map_while(|m: usize| table.column(&m.to_string()).ok()).collect();
    if minute_columns.is_empty() {
        return Err(TraceError::new("invocations.csv", 1, "no per-minute columns (named 1, 2, ...)"));
    }
    let mut functions = Vec::with_capacity(table.rows.len());
    let mut without_durations = 0;
    for (line, row) in &table.rows {
        let key = (row[owner].to_owned(), row[app].to_owned(), row[function].to_owned());
        let per_minute = minute_columns
            .iter()
            .map(|&c| table.number::<u32>(*line, row, c, "a whole number of invocations"))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(durations_ms) = durations.get(&key).cloned() else {
            without_durations += 1;
            continue;
        };
        let memory_mb = memory_by_app.get(&(key.0.clone(), key.1.clone())).cloned();
        functions.push(TraceFunction {
            hash_owner: key.0,
            hash_app: key.1,
            hash_function: key.2,
            trigger: row[trigger].to_owned(),
            per_minute,
            durations_ms,
            memory_mb,
        });
    }
    Ok((Trace { functions, minutes: minute_columns.len() }, without_durations))
}

type FunctionKey = (String, String, String);

fn parse_durations(text: &str) -> Result<HashMap<FunctionKey, Percentiles>, TraceError> {
    let table = Table::parse("durations.csv", text)?;
    let (owner, app, function) = (table.column("HashOwner")?, table.column("HashApp")?, table.column("HashFunction")?);
    let mut by_function = HashMap::with_capacity(table.rows.len());
    for (line, row) in &table.rows {
        let percentiles = table.percentiles(*line, row, &DURATION_LEVELS)?;
        by_function.insert((row[owner].to_owned(), row[app].to_owned(), row[function].to_owned()), percentiles);
    }
    Ok(by_function)
}

fn parse_memory(text: &str) -> Result<HashMap<(String, String), Percentiles>, TraceError> {
    let table = Table::parse("memory.csv", text)?;
    let (owner, app) = (table.column("HashOwner")?, table.column("HashApp")?);
    let mut by_app = HashMap::with_capacity(table.rows.len());
    for (line, row) in &table.rows {
        let percentiles = table.percentiles(*line, row, &MEMORY_LEVELS)?;
        by_app.insert((row[owner].to_owned(), row[app].to_owned()), percentiles);
    }
    Ok(by_app)
}

/// Writes a trace in the same layout (for `--synthetic --write`).
pub fn write(trace: &Trace) -> (String, String, String) {
    let minutes: Vec<String> = (1..=trace.minutes).map(|m| m.to_string()).collect();
    let mut invocations = format!("HashOwner,HashApp,HashFunction,Trigger,{}\n", minutes.join(","));
    let mut durations = String::from("HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,");
    durations.push_str(&DURATION_LEVELS.map(|(name, _)| name).join(","));
    durations.push('\n');
    let mut memory = String::from("HashOwner,HashApp,SampleCount,AverageAllocatedMb,");
    memory.push_str(&MEMORY_LEVELS.map(|(name, _)| name).join(","));
    memory.push('\n');
    for f in &trace.functions {
        let counts: Vec<String> = f.per_minute.iter().map(u32::to_string).collect();
        invocations.push_str(&format!(
            "{},{},{},{},{}\n",
            f.hash_owner,
            f.hash_app,
            f.hash_function,
            f.trigger,
            counts.join(",")
        ));
        let total: u64 = f.per_minute.iter().map(|&c| u64::from(c)).sum();
        let d = &f.durations_ms;
        let values: Vec<String> = DURATION_LEVELS.iter().map(|(_, level)| format_number(d.value_at(*level))).collect();
        durations.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            f.hash_owner,
            f.hash_app,
            f.hash_function,
            format_number(d.value_at(0.5)),
            total,
            format_number(d.value_at(0.0)),
            format_number(d.value_at(1.0)),
            values.join(",")
        ));
        if let Some(m) = &f.memory_mb {
            let values: Vec<String> =
                MEMORY_LEVELS.iter().map(|(_, level)| format_number(m.value_at(*level))).collect();
            memory.push_str(&format!(
                "{},{},{},{},{}\n",
                f.hash_owner,
                f.hash_app,
                total,
                format_number(m.value_at(0.5)),
                values.join(",")
            ));
        }
    }
    (invocations, durations, memory)
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 { format!("{value:.0}") } else { format!("{value}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const INVOCATIONS: &str = "\
HashOwner,HashApp,HashFunction,Trigger,1,2,3
o1,a1,f1,http,2,0,5
o1,a1,f2,timer,1,1,1
o2,a2,f3,http,9,9,9
";
    pub const DURATIONS: &str = "\
HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,percentile_Average_1,percentile_Average_25,percentile_Average_50,percentile_Average_75,percentile_Average_99,percentile_Average_100
o1,a1,f1,100,7,10,1000,10,20,50,100,200,900,1000
o1,a1,f2,5,3,1,9,1,1,2,5,7,9,9
";
    pub const MEMORY: &str = "\
HashOwner,HashApp,SampleCount,AverageAllocatedMb,AverageAllocatedMb_pct1,AverageAllocatedMb_pct5,AverageAllocatedMb_pct25,AverageAllocatedMb_pct50,AverageAllocatedMb_pct75,AverageAllocatedMb_pct95,AverageAllocatedMb_pct99,AverageAllocatedMb_pct100
o1,a1,10,120,100,105,110,120,130,140,150,160
";

    #[test]
    fn parses_the_three_files() {
        let (trace, without_durations) = parse(INVOCATIONS, DURATIONS, Some(MEMORY)).unwrap();
        assert_eq!(without_durations, 1, "f3 has no durations");
        assert_eq!(trace.minutes, 3);
        assert_eq!(trace.functions.len(), 2);
        let f1 = &trace.functions[0];
        assert_eq!(f1.per_minute, [2, 0, 5]);
        assert_eq!(f1.trigger, "http");
        assert_eq!(f1.durations_ms.value_at(0.5), 100.0);
        assert_eq!(f1.durations_ms.value_at(0.99), 900.0);
        assert_eq!(f1.memory_mb.as_ref().unwrap().value_at(0.5), 120.0);
        assert_eq!(f1.memory_mb.as_ref().unwrap().value_at(0.0), 100.0, "pct1 stands for level 0");
    }

    #[test]
    fn columns_are_found_by_name_in_any_order() {
        let reordered = "HashFunction,Trigger,HashOwner,HashApp,1,2\nf1,http,o1,a1,4,4\n";
        let (trace, _) = parse(reordered, DURATIONS, None).unwrap();
        assert_eq!(trace.functions[0].per_minute, [4, 4]);
        assert!(trace.functions[0].memory_mb.is_none());
    }

    #[test]
    fn malformed_files_name_the_file_the_line_and_the_column() {
        let bad_count = INVOCATIONS.replace("o1,a1,f2,timer,1,1,1", "o1,a1,f2,timer,1,x,1");
        let e = parse(&bad_count, DURATIONS, None).unwrap_err().to_string();
        assert_eq!(e, "invocations.csv line 3: column \"2\" is \"x\", expected a whole number of invocations");
        let short_row = INVOCATIONS.replace("o2,a2,f3,http,9,9,9", "o2,a2,f3,http,9");
        let e = parse(&short_row, DURATIONS, None).unwrap_err().to_string();
        assert_eq!(e, "invocations.csv line 4: 5 fields where the header has 7");
        let e = parse("", DURATIONS, None).unwrap_err().to_string();
        assert!(e.contains("invocations.csv") && e.contains("empty"), "{e}");
        let e = parse("HashOwner,HashApp,HashFunction,Trigger\n", DURATIONS, None).unwrap_err().to_string();
        assert!(e.contains("per-minute"), "{e}");
        let no_column = DURATIONS.replace("percentile_Average_99,", "");
        let no_column = no_column.replace(",900,", ",").replace(",9,9\n", ",9\n");
        let e = parse(INVOCATIONS, &no_column, None).unwrap_err().to_string();
        assert!(e.contains("durations.csv") && e.contains("percentile_Average_99"), "{e}");
        let decreasing = DURATIONS.replace("10,20,50,100,200,900,1000", "10,20,50,100,20,900,1000");
        let e = parse(INVOCATIONS, &decreasing, None).unwrap_err().to_string();
        assert!(e.contains("durations.csv line 2") && e.contains("decrease"), "{e}");
        let negative = MEMORY.replace(",100,105,", ",-1,105,");
        let e = parse(INVOCATIONS, DURATIONS, Some(&negative)).unwrap_err().to_string();
        assert!(e.contains("memory.csv line 2"), "{e}");
    }

    #[test]
    fn a_written_trace_reads_back_the_same() {
        let (trace, _) = parse(INVOCATIONS, DURATIONS, Some(MEMORY)).unwrap();
        let (invocations, durations, memory) = write(&trace);
        let (again, _) = parse(&invocations, &durations, Some(&memory)).unwrap();
        assert_eq!(again, trace);
    }
}
