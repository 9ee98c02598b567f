//! The results table: one row per scenario measure, one column per system,
//! plus the per-step details that explain each number.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::servers::System;

#[derive(Debug)]
struct Row {
    scenario: String,
    measure: String,
    goal: String,
    cells: BTreeMap<System, String>,
}

#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    details: Vec<String>,
    /// Figures later rows are derived from (S4's and S5's ratios).
    numbers: BTreeMap<(String, System), f64>,
}

impl Report {
    /// Sets one cell, creating its row (in first-set order) if needed.
    pub fn set(
        &mut self,
        scenario: &str,
        measure: &str,
        goal: &str,
        system: System,
        value: impl Into<String>,
    ) {
        let index = match self
            .rows
            .iter()
            .position(|r| r.scenario == scenario && r.measure == measure)
        {
            Some(index) => index,
            None => {
                self.rows.push(Row {
                    scenario: scenario.to_owned(),
                    measure: measure.to_owned(),
                    goal: goal.to_owned(),
                    cells: BTreeMap::new(),
                });
                self.rows.len() - 1
            }
        };
        self.rows[index].cells.insert(system, value.into());
    }

    pub fn number(&mut self, key: &str, system: System, value: f64) {
        self.numbers.insert((key.to_owned(), system), value);
    }

    pub fn get(&self, key: &str, system: System) -> Option<f64> {
        self.numbers.get(&(key.to_owned(), system)).copied()
    }

    /// A line for the details section, also printed as progress.
    pub fn detail(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("{line}");
        self.details.push(line);
    }

    /// The table and the details, in markdown.
    pub fn markdown(&self, systems: &[System]) -> String {
        let mut out = String::new();
        let _ = write!(out, "| scenario | measure | goal |");
        for system in systems {
            let _ = write!(out, " {system} |");
        }
        out.push_str("\n| --- | --- | --- |");
        for _ in systems {
            out.push_str(" --- |");
        }
        out.push('\n');
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        // Scenario order; within one, the order the rows were first set.
        rows.sort_by(|a, b| a.scenario.cmp(&b.scenario));
        for row in rows {
            let _ = write!(out, "| {} | {} | {} |", row.scenario, row.measure, row.goal);
            for system in systems {
                let cell = row.cells.get(system).map_or("n/a", String::as_str);
                let _ = write!(out, " {} |", cell.replace('|', "/"));
            }
            out.push('\n');
        }
        out.push_str("\n<details><summary>Every step of the run</summary>\n\n```text\n");
        for line in &self.details {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("```\n\n</details>\n");
        out
    }
}
