from calicoctl.cli import console

console()
