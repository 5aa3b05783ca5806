//! The seeded simulation of whole agents (`weir_sim::run`): 200 seeds here (seeds 1..=N with
//! `WEIR_SIM_SEEDS=N`: the nightly run takes 2,000), one with `WEIR_SIM_SEED=N` (a failing
//! seed's replay, with its whole trace).

use std::time::Instant;

use weir_sim::{Phases, run};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

#[test]
fn seeds_keep_every_checkpoint_exactly_once() {
    let seeds: Vec<u64> = match env("WEIR_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (1..=env("WEIR_SIM_SEEDS").unwrap_or(200)).collect(),
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    let (mut faults, mut released) = (0, 0);
    for &seed in &seeds {
        match run(seed, Phases::default()) {
            Ok(outcome) => {
                faults += outcome.faults;
                released += outcome.released.len();
                if seeds.len() == 1 {
                    println!("{}", outcome.trace.join("\n"));
                }
            }
            Err(e) => {
                eprintln!("{e}");
                failed.push(seed);
            }
        }
    }
    println!(
        "{} seeds in {:.1} s: {faults} faults injected, {released} checkpoints released; failing seeds: {failed:?}",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "failing seeds (replay one with WEIR_SIM_SEED=N): {failed:?}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let phases =
        Phases { faults: std::time::Duration::from_secs(10), calm: std::time::Duration::from_secs(8) };
    let first = run(3, phases).unwrap_or_else(|e| panic!("{e}"));
    let again = run(3, phases).unwrap_or_else(|e| panic!("{e}"));
    assert!(first.faults > 0 && !first.released.is_empty(), "the run did something");
    assert_eq!(first.trace, again.trace, "seed 3 ran differently twice");
    assert_eq!(first.released, again.released);
}
