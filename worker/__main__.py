from hostler.worker.cli.main import main

main()
