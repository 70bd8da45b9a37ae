//! Equality of TOML content regardless of layout: quoting, whitespace, comments and table
//! style (inline or standard) do not count. Used to tell "our entry is already there" from
//! "someone defined this runtime differently", and an uninstalled config from its backup.

use toml_edit::{Item, Value};

pub fn same_item(a: &Item, b: &Item) -> bool {
    if let (Some(a), Some(b)) = (a.as_table_like(), b.as_table_like()) {
        return a.len() == b.len()
            && a.iter()
                .all(|(key, item)| b.get(key).is_some_and(|other| same_item(item, other)));
    }
    match (a, b) {
        (Item::None, Item::None) => true,
        (Item::Value(a), Item::Value(b)) => same_value(a, b),
        (Item::ArrayOfTables(a), Item::ArrayOfTables(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b.iter())
                    .all(|(a, b)| same_item(&Item::Table(a.clone()), &Item::Table(b.clone())))
        }
        _ => false,
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.value() == b.value(),
        (Value::Integer(a), Value::Integer(b)) => a.value() == b.value(),
        (Value::Float(a), Value::Float(b)) => {
            a.value() == b.value() || (a.value().is_nan() && b.value().is_nan())
        }
        (Value::Boolean(a), Value::Boolean(b)) => a.value() == b.value(),
        (Value::Datetime(a), Value::Datetime(b)) => a.value() == b.value(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(a, b)| same_value(a, b))
        }
        (Value::InlineTable(a), Value::InlineTable(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, value)| b.get(key).is_some_and(|other| same_value(value, other)))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml_edit::DocumentMut;

    fn doc(text: &str) -> Item {
        Item::Table(text.parse::<DocumentMut>().unwrap().as_table().clone())
    }

    #[test]
    fn layout_does_not_count() {
        let a = doc("# note\n[a]\n  x = 'v'\n  y = [1, 2]\n[a.b]\nz = true\n");
        let b = doc("a = { x = \"v\", y = [ 1,2 ], b = { z = true } }\n");
        assert!(same_item(&a, &b));
    }

    #[test]
    fn values_count() {
        assert!(!same_item(&doc("a = 1\n"), &doc("a = 2\n")));
        assert!(!same_item(&doc("a = 1\n"), &doc("a = 1\nb = 1\n")));
        assert!(!same_item(&doc("a = '1'\n"), &doc("a = 1\n")));
    }
}
