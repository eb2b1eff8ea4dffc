//! `ferrule certs DIR`: a development CA and one SVID per service, shaped like Consul's,
//! for the static-mode tour and for trying ferrule by hand. The files and their names
//! are `ferrule_dev::ca::CertsDir`'s (the same as `cargo xtask certs`): `ca.pem`,
//! `ca-key.pem`, then `<service>.pem` and `<service>-key.pem` per service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ferrule_dev::ca::{CertsDir, leaf_ttl_flag};

#[derive(clap::Args)]
pub(crate) struct CertsArgs {
    /// Where to write ca.pem and ca-key.pem, and <SERVICE>.pem and <SERVICE>-key.pem per
    /// service (keys mode 0600). Created if missing; a CA already there is kept, so
    /// running it again renews the SVIDs and leaves the trust bundle as it is.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The services to write an SVID for, comma-separated (letters, digits, - and _).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "web,api",
        value_name = "NAME,..."
    )]
    services: Vec<String>,
    /// How long the SVIDs are valid: a Go duration (72h, 90m) or a number of hours,
    /// from 1h to 8760h as Consul allows.
    #[arg(long, default_value = "72h", value_parser = leaf_ttl_flag, value_name = "DURATION")]
    ttl: Duration,
    /// The cluster UUID of a new CA, which makes the trust domain <UUID>.consul
    /// [default: a random one]; with a CA already in DIR, it must be that CA's.
    #[arg(long, value_name = "UUID")]
    cluster_id: Option<String>,
}

/// Writes the files and prints what it wrote; exit 2 (naming the path and the reason)
/// when it cannot.
pub(crate) fn run(args: CertsArgs) -> ExitCode {
    let dir = CertsDir {
        dir: args.dir,
        services: args.services,
        ttl: args.ttl,
        cluster_id: args.cluster_id,
    };
    match dir.write() {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferrule certs: {e}");
            ExitCode::from(2)
        }
    }
}
