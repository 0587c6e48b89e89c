"""Training stages (Ray Train): each a declaration (:class:`spresso.train.driver.TrainingStage`) run by one
driver, on the harness (:mod:`spresso.train.harness`) with one step loop (:mod:`spresso.train.loop`)."""
