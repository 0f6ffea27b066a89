from kvmkit.cli import main

main()
