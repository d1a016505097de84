"""A lab's life, one job a module: claim (its plan and lease), up (the seed page's steps),
checks (post-boot commands over SSH), status, down, gc, pxe (physical machines and their
virtual twins), artifacts (what `vlab render` writes); nodes reaches the lab's nodes."""
