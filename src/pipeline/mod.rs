//! Pipeline: what to build for a push, from the repository's `.deploybot.toml` (or the
//! project's default), within what the project allows. No I/O here: the worker reads the file
//! from the checkout and hands its text in.

pub mod definition;
pub mod dockerfile;
mod glob;

pub use definition::{Definition, Service, Stage, Step};
pub use glob::Pattern;
