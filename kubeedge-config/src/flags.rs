//! Command-line flags: `--name value` or `--name=value`, each at most once, from a list of known
//! names.

use std::collections::HashMap;

use crate::{Error, Result};

/// `--name value` (or `--name=value`) flags, each given at most once.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    values: HashMap<String, String>,
}

impl Flags {
    /// Parses `--name value` pairs; `known` lists the accepted names (without `--`).
    pub fn parse(args: impl Iterator<Item = String>, known: &[&str]) -> Result<Self> {
        let mut values = HashMap::new();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(Error::Invalid(format!("unexpected argument {arg:?}")));
            };
            // `--name value` or `--name=value`.
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (flag, None),
            };
            if !known.contains(&name) {
                return Err(Error::Invalid(format!("unknown flag --{name}")));
            }
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .ok_or_else(|| format!("--{name} needs a value"))?,
            };
            if values.insert(name.to_owned(), value).is_some() {
                return Err(Error::Invalid(format!("--{name} given twice")));
            }
        }
        Ok(Self { values })
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of `--name` parsed, or `default` when not given.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| Error::Invalid(format!("--{name} {v:?}: {e}"))),
        }
    }

    /// The value of `--name` parsed; an error when not given.
    pub fn required<T: std::str::FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let v = self
            .get(name)
            .ok_or_else(|| format!("--{name} is required"))?;
        v.parse()
            .map_err(|e| Error::Invalid(format!("--{name} {v:?}: {e}")))
    }
}
