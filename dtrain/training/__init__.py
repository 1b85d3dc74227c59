"""Training, the same for one process and for every rank of a cluster.

loop           the one epoch/step loop: train(network, comm, batches, ...)
sync           gradient synchronisation strategies: sum over the ranks, finite check, update
checkpointing  what a checkpoint records, where a run starts, writing one
hooks          the loop's audience (callbacks, rank 0's reports) and the tests' step hooks
local          fit in this process: the loop on a one-rank communicator
"""
