//! A `ferrule dev` that also serves the SPIFFE Workload API: one unix socket per service
//! in a temporary directory (`--workload-api-socket SERVICE=PATH`), optionally with other
//! trust domains' bundles (`--federate-with`). Sidecars started with
//! `SidecarConfig::from_workload_api(service, &agent.endpoint(service))` take their
//! identity from it; tests mint callers with the agent's own CA, read from its data dir.

use std::path::PathBuf;

use ferrule_dev::ca::DevCa;
use ferrule_dev::workload::pb::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::Channel;

use crate::agent::{AgentOptions, DevAgent};

/// A dev agent with a Workload API socket per service.
pub struct WorkloadAgent {
    pub agent: DevAgent,
    services: Vec<String>,
    // Dropped after the agent (declared after it): the sockets and bundle files.
    dir: tempfile::TempDir,
}

impl WorkloadAgent {
    /// Serves `services`, each on its own socket, sending the bundles of `federate`'s
    /// trust domains along.
    pub async fn start(services: &[&str], federate: &[&DevCa]) -> WorkloadAgent {
        WorkloadAgent::start_with(services, federate, AgentOptions::default()).await
    }

    pub async fn start_with(
        services: &[&str],
        federate: &[&DevCa],
        mut options: AgentOptions,
    ) -> WorkloadAgent {
        let dir = tempfile::Builder::new()
            .prefix("ferrule-wl-")
            .tempdir()
            .expect("a directory for the Workload API sockets");
        for service in services {
            let path = dir.path().join(format!("{service}.sock"));
            options.extra_args.push("--workload-api-socket".into());
            options
                .extra_args
                .push(format!("{service}={}", path.display()));
        }
        for ca in federate {
            let file = dir.path().join(format!("{}.pem", ca.trust_domain()));
            std::fs::write(&file, ca.cert_pem()).expect("write a federated bundle");
            options.extra_args.push("--federate-with".into());
            options
                .extra_args
                .push(format!("{}={}", ca.trust_domain(), file.display()));
        }
        let agent = DevAgent::start(options).await;
        WorkloadAgent {
            agent,
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            dir,
        }
    }

    /// The socket that serves `service`.
    pub fn socket(&self, service: &str) -> PathBuf {
        assert!(
            self.services.iter().any(|s| s == service),
            "the agent serves no Workload API socket for {service}"
        );
        self.dir.path().join(format!("{service}.sock"))
    }

    /// `unix:///…/service.sock`, as `--workload-api` takes it.
    pub fn endpoint(&self, service: &str) -> String {
        format!("unix://{}", self.socket(service).display())
    }

    /// The agent's active CA (the data dir keeps it), to mint callers of its trust
    /// domain.
    pub fn ca(&self) -> DevCa {
        let read = |name: &str| {
            std::fs::read_to_string(self.agent.data_dir().join(name))
                .unwrap_or_else(|e| panic!("read the agent's {name}: {e}"))
        };
        DevCa::from_pem(&read("ca.pem"), &read("ca-key.pem")).expect("the agent's CA loads")
    }

    pub fn trust_domain(&self) -> String {
        self.ca().trust_domain()
    }

    /// A generated gRPC client of `service`'s socket that sends no metadata of its own.
    pub async fn raw_client(&self, service: &str) -> SpiffeWorkloadApiClient<Channel> {
        let endpoint = spiffe::transport::Endpoint::Unix(self.socket(service));
        let channel = spiffe::transport::connect(&endpoint)
            .await
            .unwrap_or_else(|e| panic!("connect to the Workload API socket of {service}: {e}"));
        SpiffeWorkloadApiClient::new(channel)
    }
}
