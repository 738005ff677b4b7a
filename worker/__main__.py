from hostler.worker.cli import main

main()
