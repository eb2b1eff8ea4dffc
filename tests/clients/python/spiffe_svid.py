"""PyPI `spiffe` (gRPC C-core underneath) fetches an X.509-SVID from `ferrule dev
--workload-api-socket`. C-core sends the socket path as `:authority`, which the dev
agent must accept as a SPIRE agent does.

Usage: spiffe_svid.py SOCKET_PATH EXPECTED_SPIFFE_ID
"""

import sys

from spiffe import WorkloadApiClient


def main():
    socket, expected = sys.argv[1], sys.argv[2]
    client = WorkloadApiClient(socket_path=f"unix:{socket}")
    try:
        svid = client.fetch_x509_svid(timeout=20)
        got = str(svid.spiffe_id)
        if got != expected:
            raise AssertionError(f"SVID for {got}, expected {expected}")
        if not svid.cert_chain:
            raise AssertionError("no certificate chain")
        bundles = client.fetch_x509_bundles(timeout=20)
        td = expected.split("/")[2]
        if bundles.get_bundle_for_trust_domain(
                __import__("spiffe").TrustDomain(td)) is None:
            raise AssertionError(f"no bundle for {td}")
        print(f"ok: fetched the SVID of {got} and the bundle of {td}")
    finally:
        client.close()


if __name__ == "__main__":
    main()
