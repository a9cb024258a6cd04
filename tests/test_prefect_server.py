from prefect import flow


@flow
def _hello(x: int) -> int:
    return x + 1


def test_flow_runs_against_the_shared_server(prefect_server, prefect_client_sync):
    state = _hello(1, return_state=True)
    assert state.is_completed() and state.result() == 2
    runs = prefect_client_sync.read_flow_runs()
    assert any(r.id == state.state_details.flow_run_id for r in runs)
