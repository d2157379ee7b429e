//! `limo init-model`.

#[derive(clap::Args)]
pub struct InitModelArgs {}

pub fn run(_args: InitModelArgs) -> anyhow::Result<()> {
    anyhow::bail!("init-model: not built yet")
}
