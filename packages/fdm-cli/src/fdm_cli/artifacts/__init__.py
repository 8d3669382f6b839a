"""Files a run writes and reads: checkpoints and model folders (`checkpoints`), output paths
(`outputs`), pictures (`pictures`), the loss log (`losslog`), the run folder lock (`runlock`)."""
