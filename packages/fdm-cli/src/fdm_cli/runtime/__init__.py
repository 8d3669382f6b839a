"""Where and how a job runs: the device (`device`), DDP (`distributed`), CPU threads (`threads`),
signals (`signals`) and the software environment (`environment`)."""
