//! Writes seed inputs for the `protocol_events` fuzz target into `fuzz/corpus/protocol_events/`:
//! random event sequences (a fixed seed, so the run is reproducible) that the real protocol
//! must pass, and for each mutant the first random sequence that catches it, so that the
//! corpus replay test can prove the harness fails when the protocol breaks.
//!
//! `cargo run -p weir-protocol-model --profile model --example seed_corpus -- [RUNS] [SEED]`
//!
//! A random sequence that the real protocol fails stops the run and prints the trace: that is
//! a bug in the protocol (or the model), not a seed.

use std::path::PathBuf;

use weir_protocol::Mutant;
use weir_protocol_model::checkpoint::CheckpointModel;
use weir_protocol_model::fuzzing;

/// xorshift64*: enough to spread inputs, and reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map_or(20_000, |a| a.parse().expect("RUNS is a number"));
    let seed: u64 = args.next().map_or(0x005e_ed0f_3e1f, |a| a.parse().expect("SEED is a number"));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/protocol_events");
    std::fs::create_dir_all(&dir).expect("corpus folder");
    let model = CheckpointModel::new(fuzzing::scope());
    let mut rng = Rng(seed);
    // The failover mutants need a standby, which the fuzz scope does not have (the
    // `failover` scopes of `tests/checkpoint.rs` catch them).
    let failover = [
        Mutant::NoEpochCheck,
        Mutant::PromoteUnsynced,
        Mutant::StandbyEmits,
        Mutant::StandbyOwnOrder,
        Mutant::WarmDropsUncovered,
    ];
    let mut uncaught: Vec<Mutant> = Mutant::ALL.into_iter().filter(|m| !failover.contains(m)).collect();
    let (mut random_written, mut steps) = (0, 0usize);
    for run in 0..runs {
        let len = 16 + (rng.next() % 240) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        match fuzzing::run_model(&model, &bytes) {
            Ok(n) => steps += n,
            Err((name, trace)) => {
                panic!("run {run} (seed {seed}): the real protocol violates \"{name}\":\n{trace}")
            }
        }
        if run % (runs / 24).max(1) == 0 {
            std::fs::write(dir.join(format!("seed-random-{random_written:02}")), &bytes).expect("write seed");
            random_written += 1;
        }
        uncaught.retain(|&mutant| match fuzzing::run_mutant(mutant, &bytes) {
            Err((name, _)) => {
                println!("run {run}: mutant {} caught by \"{name}\"", mutant.name());
                std::fs::write(dir.join(format!("seed-{}", mutant.name())), &bytes).expect("write seed");
                false
            }
            Ok(_) => true,
        });
    }
    println!("{runs} random sequences ({steps} steps) passed every property; {random_written} kept as seeds");
    for mutant in uncaught {
        println!("no random sequence caught mutant {}", mutant.name());
    }
}
