//! Where a process sits in a distributed run, read from the variables its launcher set:
//! torchrun's (also set by `limo launch`) or, failing those, Slurm's (`srun`).

use std::time::Duration;

use anyhow::{bail, Context};

/// The port rank 0 listens on when nothing says otherwise (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// How long a rank waits for the others when `LIMO_DIST_TIMEOUT` does not say: generous,
/// because healthy ranks also wait for each other's slow steps (a checkpoint write, the first
/// step's compilation). A rank that dies is noticed at once, whatever the timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The shortest timeout taken: below it, the children would read back 0 (the launcher passes
/// seconds as text) or give up at once.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// The variable `limo launch --timeout` sets for its children (seconds, may be fractional).
pub const TIMEOUT_VAR: &str = "LIMO_DIST_TIMEOUT";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank, 0..world_size.
    pub rank: usize,
    pub world_size: usize,
    /// Rank on this machine: which GPU this process drives.
    pub local_rank: usize,
    /// Processes on this machine.
    pub local_world_size: usize,
    /// Host of rank 0, where the rendezvous happens.
    pub master_addr: String,
    pub master_port: u16,
}

impl DistEnv {
    /// The run's placement from the process environment; `None` when neither torchrun's
    /// (`RANK`, `WORLD_SIZE`) nor Slurm's (`SLURM_PROCID`) variables are set. torchrun's win
    /// when both are (e.g. `limo launch` inside a Slurm allocation).
    pub fn from_env() -> anyhow::Result<Option<DistEnv>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// `from_env` over any source of variables (the tests pass a map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<DistEnv>> {
        let env = if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            torchrun(&get)?
        } else if get("SLURM_PROCID").is_some() {
            slurm(&get)?
        } else {
            return Ok(None);
        };
        env.check()?;
        Ok(Some(env))
    }

    /// Whether this run has more than one rank.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    /// The CUDA ordinal this rank drives, from `CUDA_VISIBLE_DEVICES` (see [`gpu_ordinal`]).
    pub fn gpu(&self) -> anyhow::Result<usize> {
        gpu_ordinal(
            self.local_rank,
            std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
        )
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.world_size == 0 {
            bail!("the world size is 0");
        }
        if self.world_size > crate::MAX_WORLD_SIZE {
            bail!(
                "the world size {} is more than limo handles ({})",
                self.world_size,
                crate::MAX_WORLD_SIZE
            );
        }
        if self.rank >= self.world_size {
            bail!(
                "rank {} is not below the world size {}",
                self.rank,
                self.world_size
            );
        }
        if self.local_world_size == 0 || self.local_world_size > self.world_size {
            bail!(
                "{} processes per node does not fit a world of {}",
                self.local_world_size,
                self.world_size
            );
        }
        if self.local_rank >= self.local_world_size {
            bail!(
                "local rank {} is not below the processes per node {}",
                self.local_rank,
                self.local_world_size
            );
        }
        if self.master_addr.is_empty() {
            bail!("the master address is empty");
        }
        Ok(())
    }
}

/// The collective timeout from `LIMO_DIST_TIMEOUT` (seconds), or `default`.
pub fn timeout_from_env(default: Duration) -> anyhow::Result<Duration> {
    timeout_from_vars(|k| std::env::var(k).ok(), default)
}

pub fn timeout_from_vars(
    get: impl Fn(&str) -> Option<String>,
    default: Duration,
) -> anyhow::Result<Duration> {
    let Some(v) = get(TIMEOUT_VAR) else {
        return Ok(default);
    };
    parse_seconds(&v).with_context(|| format!("{TIMEOUT_VAR}={v:?}"))
}

/// Seconds (integer or decimal, at least [`MIN_TIMEOUT`]) as a `Duration`.
pub fn parse_seconds(v: &str) -> anyhow::Result<Duration> {
    let secs: f64 = v
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("not a number of seconds"))?;
    if !(secs > 0.0 && secs < 1e9) {
        bail!("must be a positive number of seconds");
    }
    if secs < MIN_TIMEOUT.as_secs_f64() {
        bail!("must be at least 0.001 seconds (1 ms)");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn torchrun(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<DistEnv> {
    let rank = required(get, "RANK")?;
    let world_size = required(get, "WORLD_SIZE")?;
    // Launchers that set only RANK and WORLD_SIZE (mpirun wrappers, hand-written scripts)
    // describe one machine.
    let local_rank = optional(get, "LOCAL_RANK")?.unwrap_or(rank);
    let local_world_size = optional(get, "LOCAL_WORLD_SIZE")?.unwrap_or(world_size);
    Ok(DistEnv {
        rank,
        world_size,
        local_rank,
        local_world_size,
        master_addr: get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
        master_port: port(get)?,
    })
}

fn slurm(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<DistEnv> {
    let rank = required(get, "SLURM_PROCID")?;
    let world_size = required(get, "SLURM_NTASKS")?;
    let local_rank = required(get, "SLURM_LOCALID")?;
    let local_world_size = slurm_tasks_per_node(get, world_size)?;
    let master_addr = match (get("MASTER_ADDR"), nodelist(get)) {
        (Some(addr), _) => addr,
        (None, Some((var, list))) => {
            first_host(&list).with_context(|| format!("{var}={list:?}"))?
        }
        (None, None) if world_size == 1 => "127.0.0.1".into(),
        (None, None) => bail!("SLURM_JOB_NODELIST is not set: set MASTER_ADDR to rank 0's host"),
    };
    Ok(DistEnv {
        rank,
        world_size,
        local_rank,
        local_world_size,
        master_addr,
        master_port: port(get)?,
    })
}

fn nodelist(get: &impl Fn(&str) -> Option<String>) -> Option<(&'static str, String)> {
    ["SLURM_JOB_NODELIST", "SLURM_NODELIST"]
        .into_iter()
        .find_map(|var| get(var).map(|v| (var, v)))
}

/// Tasks on this node: `SLURM_NTASKS_PER_NODE` when set (`--ntasks-per-node`), else this
/// node's entry of `SLURM_TASKS_PER_NODE` (`2(x3),1`: 2 on each of the first three nodes,
/// then 1), else the tasks spread evenly over `SLURM_NNODES`.
fn slurm_tasks_per_node(
    get: &impl Fn(&str) -> Option<String>,
    world_size: usize,
) -> anyhow::Result<usize> {
    if let Some(n) = optional(get, "SLURM_NTASKS_PER_NODE")? {
        return Ok(n);
    }
    if let Some(list) = get("SLURM_TASKS_PER_NODE") {
        let node = optional(get, "SLURM_NODEID")?.unwrap_or(0);
        return tasks_on_node(&list, node)
            .with_context(|| format!("SLURM_TASKS_PER_NODE={list:?} (node {node})"));
    }
    let nodes = match optional(get, "SLURM_NNODES")? {
        Some(n) => n,
        None => optional(get, "SLURM_JOB_NUM_NODES")?.unwrap_or(1),
    };
    if nodes == 0 || !world_size.is_multiple_of(nodes) {
        bail!(
            "cannot derive tasks per node: {world_size} tasks over {nodes} nodes; \
             set SLURM_NTASKS_PER_NODE"
        );
    }
    Ok(world_size / nodes)
}

/// Entry `node` of a Slurm count list such as `2(x3),1`.
fn tasks_on_node(list: &str, node: usize) -> anyhow::Result<usize> {
    let mut first = 0;
    for item in list.split(',') {
        let (count, repeat) = match item.split_once("(x") {
            Some((c, r)) => (
                c,
                r.strip_suffix(')')
                    .context("unclosed repeat")?
                    .parse::<usize>()
                    .context("bad repeat")?,
            ),
            None => (item, 1),
        };
        let count: usize = count.trim().parse().context("bad task count")?;
        if node < first + repeat {
            return Ok(count);
        }
        first += repeat;
    }
    bail!("no entry for node {node}")
}

/// The first host of a Slurm host list: `gpu[03-05,09],cpu1` -> `gpu03`, `a[1-2]-ib[0-1]` ->
/// `a1-ib0`, `node7,node8` -> `node7`.
pub fn first_host(list: &str) -> anyhow::Result<String> {
    let mut host = String::new();
    let mut chars = list.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            ',' => break,
            '[' => {
                // Keep the first number of the range list, with its zero padding.
                let mut inner = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    inner.push(c);
                }
                if !closed {
                    bail!("unclosed '['");
                }
                let first = inner.split([',', '-']).next().unwrap_or("");
                if first.is_empty() || !first.chars().all(|c| c.is_ascii_digit()) {
                    bail!("malformed host range [{inner}]");
                }
                host.push_str(first);
            }
            ']' => bail!("unbalanced ']'"),
            c => host.push(c),
        }
    }
    if host.is_empty() {
        bail!("no host in the list");
    }
    Ok(host)
}

fn required(get: &impl Fn(&str) -> Option<String>, var: &str) -> anyhow::Result<usize> {
    optional(get, var)?.with_context(|| format!("{var} is not set"))
}

fn optional(get: &impl Fn(&str) -> Option<String>, var: &str) -> anyhow::Result<Option<usize>> {
    get(var)
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .with_context(|| format!("{var}={v:?} is not a non-negative integer"))
        })
        .transpose()
}

fn port(get: &impl Fn(&str) -> Option<String>) -> anyhow::Result<u16> {
    match get("MASTER_PORT") {
        None => Ok(DEFAULT_MASTER_PORT),
        Some(v) => match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => bail!("MASTER_PORT={v:?} is not a port number (1-65535)"),
        },
    }
}

/// The CUDA ordinal for local rank `local_rank` given `CUDA_VISIBLE_DEVICES`. torchrun and a
/// plain `srun` show every GPU of the node to every process, so rank r drives GPU r. Slurm's
/// per-task binding (`--gpus-per-task=1`, `--gpu-bind=single:1`) shows each task only its own
/// GPU, so every rank drives ordinal 0; opening ordinal `local_rank` there fails on all ranks
/// but the first.
pub fn gpu_ordinal(local_rank: usize, visible: Option<&str>) -> anyhow::Result<usize> {
    let Some(list) = visible.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(local_rank);
    };
    let shown = list.split(',').filter(|d| !d.trim().is_empty()).count();
    match shown {
        _ if local_rank < shown => Ok(local_rank),
        1 => Ok(0),
        _ => bail!(
            "local rank {local_rank} has no GPU of its own: CUDA_VISIBLE_DEVICES={list:?} shows \
             {shown} GPUs; show every local rank a GPU (one per task, or all of the node's)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> anyhow::Result<Option<DistEnv>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_not_distributed() {
        assert_eq!(parse(&[("PATH", "/bin")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables() {
        let env = parse(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            env,
            DistEnv {
                rank: 5,
                world_size: 8,
                local_rank: 1,
                local_world_size: 4,
                master_addr: "node0".into(),
                master_port: 1234,
            }
        );
        assert!(env.is_distributed());
        // Only RANK and WORLD_SIZE: one machine, local defaults and torchrun's port.
        let env = parse(&[("RANK", "1"), ("WORLD_SIZE", "2")])
            .unwrap()
            .unwrap();
        assert_eq!((env.local_rank, env.local_world_size), (1, 2));
        assert_eq!(
            (env.master_addr.as_str(), env.master_port),
            ("127.0.0.1", 29500)
        );
    }

    /// Once a capacity-overflow panic in the rendezvous's per-rank table.
    #[test]
    fn a_world_size_past_the_bound_is_an_error() {
        let huge = u64::MAX.to_string();
        let err = parse(&[("RANK", "0"), ("WORLD_SIZE", &huge)]).unwrap_err();
        assert!(err.to_string().contains("more than limo handles"), "{err}");
        let most = crate::MAX_WORLD_SIZE.to_string();
        assert!(parse(&[("RANK", "0"), ("WORLD_SIZE", &most)]).is_ok());
        assert_eq!(crate::rank_list(&[1, 3]), "[1, 3]");
        let many: Vec<usize> = (1..100_000).collect();
        let listed = crate::rank_list(&many);
        assert!(listed.ends_with("16, ... 99983 more]"), "{listed}");
    }

    #[test]
    fn torchrun_wins_over_slurm() {
        let env = parse(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((env.rank, env.world_size), (0, 2));
    }

    #[test]
    fn slurm_variables() {
        let env = parse(&[
            ("SLURM_PROCID", "6"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_NTASKS_PER_NODE", "4"),
            ("SLURM_JOB_NODELIST", "gpu[03-05,09],cpu1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(env.rank, 6);
        assert_eq!(env.world_size, 8);
        assert_eq!((env.local_rank, env.local_world_size), (2, 4));
        assert_eq!(env.master_addr, "gpu03");
        assert_eq!(env.master_port, DEFAULT_MASTER_PORT);
        // Per-node counts derived from SLURM_TASKS_PER_NODE and the node id, or the node count.
        let base = [
            ("SLURM_PROCID", "4"),
            ("SLURM_NTASKS", "5"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NODELIST", "n1"),
            ("MASTER_PORT", "4000"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        let env = with(&[("SLURM_TASKS_PER_NODE", "2(x2),1"), ("SLURM_NODEID", "2")])
            .unwrap()
            .unwrap();
        assert_eq!((env.local_world_size, env.master_addr.as_str()), (1, "n1"));
        assert_eq!(env.master_port, 4000);
        let env = with(&[("SLURM_TASKS_PER_NODE", "2(x2),1"), ("SLURM_NODEID", "1")])
            .unwrap()
            .unwrap();
        assert_eq!(env.local_world_size, 2);
        let err = with(&[("SLURM_NNODES", "2")]).unwrap_err().to_string();
        assert!(err.contains("5 tasks over 2 nodes"), "{err}");
        // MASTER_ADDR overrides the node list.
        let env = with(&[("SLURM_NNODES", "5"), ("MASTER_ADDR", "10.0.0.1")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (env.local_world_size, env.master_addr.as_str()),
            (1, "10.0.0.1")
        );
    }

    #[test]
    fn first_host_of_slurm_lists() {
        for (list, host) in [
            ("gpu[03-05,09],cpu1", "gpu03"),
            ("node7,node8", "node7"),
            ("single", "single"),
            ("a[1-2]-ib[00-01]", "a1-ib00"),
            ("rack[9]", "rack9"),
        ] {
            assert_eq!(first_host(list).unwrap(), host, "{list}");
        }
        for bad in ["", "gpu[]", "gpu[a-b]", "gpu]1", ",x"] {
            assert!(first_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "one"), ("WORLD_SIZE", "2")], "RANK=\"one\""),
            (&[("RANK", "0")], "WORLD_SIZE is not set"),
            (&[("RANK", "0"), ("WORLD_SIZE", "-2")], "WORLD_SIZE=\"-2\""),
            (&[("RANK", "2"), ("WORLD_SIZE", "2")], "rank 2 is not below"),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")],
                "MASTER_PORT=\"70000\"",
            ),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "x")],
                "LOCAL_RANK=\"x\"",
            ),
            (
                &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")],
                "SLURM_LOCALID is not set",
            ),
            (
                &[
                    ("SLURM_PROCID", "0"),
                    ("SLURM_NTASKS", "2"),
                    ("SLURM_LOCALID", "0"),
                    ("SLURM_NTASKS_PER_NODE", "2"),
                    ("SLURM_JOB_NODELIST", "gpu[0"),
                ],
                "SLURM_JOB_NODELIST=\"gpu[0\"",
            ),
            (
                &[
                    ("SLURM_PROCID", "0"),
                    ("SLURM_NTASKS", "2"),
                    ("SLURM_LOCALID", "0"),
                    ("SLURM_NTASKS_PER_NODE", "2"),
                ],
                "SLURM_JOB_NODELIST is not set",
            ),
        ];
        for (vars, expect) in cases {
            let err = format!("{:#}", parse(vars).unwrap_err());
            assert!(err.contains(expect), "{vars:?}: {err}");
        }
    }

    #[test]
    fn timeout_variable() {
        let get = |v: &'static str| move |k: &str| (k == TIMEOUT_VAR).then(|| v.to_string());
        assert_eq!(
            timeout_from_vars(get("2.5"), DEFAULT_TIMEOUT).unwrap(),
            Duration::from_millis(2500)
        );
        assert_eq!(
            timeout_from_vars(|_| None, DEFAULT_TIMEOUT).unwrap(),
            DEFAULT_TIMEOUT
        );
        for bad in ["0", "-1", "soon", "nan"] {
            let err = format!(
                "{:#}",
                timeout_from_vars(get(bad), DEFAULT_TIMEOUT).unwrap_err()
            );
            assert!(err.contains(TIMEOUT_VAR), "{err}");
        }
        // Below a millisecond: once a rendezvous that "timed out after 0ns".
        let err = format!(
            "{:#}",
            timeout_from_vars(get("1e-10"), DEFAULT_TIMEOUT).unwrap_err()
        );
        assert_eq!(
            err,
            "LIMO_DIST_TIMEOUT=\"1e-10\": must be at least 0.001 seconds (1 ms)"
        );
        assert_eq!(
            timeout_from_vars(get("0.001"), DEFAULT_TIMEOUT).unwrap(),
            MIN_TIMEOUT
        );
    }

    #[test]
    fn gpu_follows_the_local_rank_unless_the_task_sees_one_gpu() {
        // torchrun / plain srun: every GPU visible (or the variable unset).
        assert_eq!(gpu_ordinal(3, None).unwrap(), 3);
        assert_eq!(gpu_ordinal(3, Some("")).unwrap(), 3);
        assert_eq!(gpu_ordinal(3, Some("0,1,2,3,4,5,6,7")).unwrap(), 3);
        assert_eq!(gpu_ordinal(1, Some("GPU-1a2b,GPU-3c4d")).unwrap(), 1);
        // Slurm's per-task binding: each task sees its own GPU as ordinal 0.
        assert_eq!(gpu_ordinal(3, Some("3")).unwrap(), 0);
        assert_eq!(gpu_ordinal(0, Some("5")).unwrap(), 0);
        let err = gpu_ordinal(4, Some("4,5")).unwrap_err().to_string();
        assert!(
            err.contains("local rank 4") && err.contains("\"4,5\""),
            "{err}"
        );
        assert!(err.contains("2 GPUs"), "{err}");
    }
}
