pytest_plugins = ["dialtone_sim.fixtures"]
