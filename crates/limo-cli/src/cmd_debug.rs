//! `limo debug ...`.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum DebugCommand {}

pub fn run(cmd: DebugCommand) -> anyhow::Result<()> {
    match cmd {}
}
