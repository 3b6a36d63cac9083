//! memvisor's tools, on the VMM library [`memvisor`]: the CLI's pieces (the binary
//! `memvisor` is `src/main.rs`), the built-in scenarios' host sides and their [`registry`],
//! the scenario-level [`api`], [`bench`](mod@bench), [`replay`] and [`replay_many`], the fault
//! [`matrix`], the hostile-guest [`harness`], the report's text form ([`report_text`]) and the
//! `snapshot` subcommand ([`snapshot_cli`]). Dependencies point one way: this crate uses
//! `memvisor`, never the reverse. See `README.md` for the tour.

pub mod api;
pub mod bench;
pub mod harness;
pub mod matrix;
pub mod registry;
pub mod replay;
pub mod replay_many;
pub mod report_text;
pub mod snapshot_cli;
