//! Every attribute name the derives accept, named once.

use std::fmt;

use syn::{Ident, Path};

/// An attribute name.
#[derive(Copy, Clone)]
pub(crate) struct Symbol(pub(crate) &'static str);

pub(crate) const EVENT: Symbol = Symbol("event");
pub(crate) const AGGREGATE: Symbol = Symbol("aggregate");
pub(crate) const PROJECTION: Symbol = Symbol("projection");

pub(crate) const CRATE: Symbol = Symbol("crate");
pub(crate) const FAMILY: Symbol = Symbol("family");
pub(crate) const RENAME: Symbol = Symbol("rename");
pub(crate) const ALIAS: Symbol = Symbol("alias");
pub(crate) const VERSION: Symbol = Symbol("version");
pub(crate) const UPCAST_FROM: Symbol = Symbol("upcast_from");
pub(crate) const UPCAST: Symbol = Symbol("upcast");
pub(crate) const FROM: Symbol = Symbol("from");
pub(crate) const WITH: Symbol = Symbol("with");

pub(crate) const NAME: Symbol = Symbol("name");
pub(crate) const COMMAND: Symbol = Symbol("command");
pub(crate) const ERROR: Symbol = Symbol("error");
pub(crate) const SNAPSHOT: Symbol = Symbol("snapshot");
pub(crate) const EVERY: Symbol = Symbol("every");

pub(crate) const EVENTS: Symbol = Symbol("events");
pub(crate) const CONTEXT: Symbol = Symbol("context");

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// `` `a`, `b` or `c` `` for an error message.
pub(crate) fn one_of(symbols: &[Symbol]) -> String {
    let names: Vec<String> = symbols.iter().map(|s| format!("`{s}`")).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}
