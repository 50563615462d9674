//! Schema evolution: which changes between the lake's files and the current schemas are allowed.
//!
//! A column (or struct field) that is new, or no longer written, is fine: DuckDB reads old and
//! new files together with `union_by_name = true`. A column whose type changed would break
//! readers of the whole table, so the lake role refuses to start and names it.

use arrow_schema::{DataType, Fields};

/// A column whose type differs between the lake's newest file and the current schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeChange {
    /// Dotted path of the column (struct fields joined by `.`, list items as `[]`).
    pub column: String,
    /// Type in the lake.
    pub was: String,
    /// Type from the current schema.
    pub now: String,
}

impl std::fmt::Display for TypeChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "column \"{}\" was {} and would now be {}",
            self.column, self.was, self.now
        )
    }
}

/// Type changes from `existing` to `current`; added and removed columns are not changes.
pub fn type_changes(existing: &Fields, current: &Fields) -> Vec<TypeChange> {
    let mut out = Vec::new();
    compare_fields("", existing, current, &mut out);
    out
}

fn compare_fields(path: &str, existing: &Fields, current: &Fields, out: &mut Vec<TypeChange>) {
    for old in existing {
        if let Some((_, new)) = current.find(old.name()) {
            let column = if path.is_empty() {
                old.name().clone()
            } else {
                format!("{path}.{}", old.name())
            };
            compare(&column, old.data_type(), new.data_type(), out);
        }
    }
}

fn compare(column: &str, old: &DataType, new: &DataType, out: &mut Vec<TypeChange>) {
    match (old, new) {
        (DataType::Struct(a), DataType::Struct(b)) => compare_fields(column, a, b, out),
        (DataType::List(a), DataType::List(b)) => {
            compare(&format!("{column}[]"), a.data_type(), b.data_type(), out);
        }
        // The timezone string is the same instant either way; parquet may spell it differently.
        (DataType::Timestamp(ua, _), DataType::Timestamp(ub, _)) if ua == ub => {}
        (a, b) if a == b => {}
        (a, b) => out.push(TypeChange {
            column: column.to_owned(),
            was: a.to_string(),
            now: b.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::Field;
    use std::sync::Arc;

    fn fields(list: Vec<Field>) -> Fields {
        Fields::from(list)
    }

    #[test]
    fn added_columns_pass_and_type_changes_are_named() {
        let item = |t| DataType::List(Arc::new(Field::new("item", t, true)));
        let old = fields(vec![
            Field::new("amount", DataType::Float64, true),
            Field::new(
                "items",
                item(DataType::Struct(fields(vec![Field::new(
                    "qty",
                    DataType::Int64,
                    true,
                )]))),
                true,
            ),
            Field::new("gone", DataType::Utf8, true),
        ]);
        let same_plus = fields(vec![
            Field::new("amount", DataType::Float64, true),
            Field::new(
                "items",
                item(DataType::Struct(fields(vec![
                    Field::new("qty", DataType::Int64, true),
                    Field::new("colour", DataType::Utf8, true),
                ]))),
                true,
            ),
            Field::new("coupon", DataType::Utf8, true),
        ]);
        assert!(type_changes(&old, &same_plus).is_empty());
        let changed = fields(vec![
            Field::new("amount", DataType::Utf8, true),
            Field::new(
                "items",
                item(DataType::Struct(fields(vec![Field::new(
                    "qty",
                    DataType::Float64,
                    true,
                )]))),
                true,
            ),
        ]);
        let changes: Vec<String> = type_changes(&old, &changed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            [
                "column \"amount\" was Float64 and would now be Utf8",
                "column \"items[].qty\" was Int64 and would now be Float64"
            ]
        );
    }
}
