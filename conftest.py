pytest_plugins = ["dialtone_sim.fixtures", "dialtone_sim.summary", "dialtone_sim.scheduling"]
