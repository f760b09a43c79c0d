//! `quorumkv-jepsen`: a seeded Jepsen-style test of a real quorumkv cluster (see the library's
//! documentation for how a run goes). Exit status 0 only when the verdict is valid, 1 when it
//! is invalid, 4 when the checker ran out of budget, 2 when the run cannot stand.

use std::process::ExitCode;

use clap::Parser;
use quorumkv_jepsen::checker::Verdict;
use quorumkv_jepsen::options::Options;

/// Exit status when the checker ran out of budget: neither valid nor proven invalid.
const EXIT_UNKNOWN: u8 = 4;

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(quorumkv_jepsen::run::run(options)) {
        Ok(Verdict::Valid) => ExitCode::SUCCESS,
        Ok(Verdict::Invalid) => ExitCode::FAILURE,
        Ok(Verdict::Unknown) => ExitCode::from(EXIT_UNKNOWN),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}
