"""Everyday sentences for model choice: the ``dev_everyday`` split of ``s3router data synth``.

The corpus's own dev sentences are fortune cookies and, for French, man pages. What users say is more like
bench_quality's everyday sentences (``bench/speech_corpus.py``), which are a *test* set: choosing the
language models' weights, or their text, by those would tune on the test. These twenty sentences per
language were written for this project as the dev counterpart: the same register (home, errands, travel,
weather), none of them a test sentence, a corpus sentence or a sentence of the text the language models
learn from (``tests/test_synth.py`` checks the first two; ``s3router lm-text`` leaves out every
``dev_everyday`` manifest's sentences). Each is spoken by one voice of the speaker task and by two of the
held-out ``DEV_VOICES`` (:func:`router_core.training.synth.plan_corpus`).
"""

from __future__ import annotations

DEV_EVERYDAY = {
    "en": [
        "It is going to rain later this afternoon", "Could you pass me the salt and pepper",
        "I forgot my umbrella at the office yesterday", "The doctor said I should drink more water",
        "We are planning a trip to the mountains next summer", "Her brother works at the hospital near the station",
        "The bus was late again this morning", "Do you know where I left my keys",
        "They painted the kitchen a bright yellow colour", "My grandmother makes the best apple cake",
        "The cat is sleeping on the warm sofa", "I need to buy milk and eggs on the way home",
        "The library closes early on Sundays", "He has been learning to play the guitar",
        "Let us meet in front of the cinema at eight", "The baby finally fell asleep after lunch",
        "Our teacher gave us too much homework this week", "Turn left at the traffic lights and keep going",
        "The coffee is still too hot to drink", "She always walks the dog before breakfast",
    ],
    "fr": [
        "Il va pleuvoir plus tard dans la journée", "Pourriez-vous me passer le sel",
        "J'ai oublié mon parapluie au bureau hier", "Le médecin m'a dit de boire plus d'eau",
        "Nous partons à la montagne l'été prochain", "Son frère travaille à l'hôpital près de la gare",
        "Le bus était encore en retard ce matin", "Tu sais où j'ai mis mes clés",
        "Ils ont peint la cuisine en jaune", "Ma tante fait le meilleur gâteau aux pommes",
        "Les oiseaux chantent dans les arbres", "Je dois acheter du lait et des œufs en rentrant",
        "La bibliothèque ferme tôt le dimanche", "Mon cousin apprend à jouer de la guitare",
        "Rendez-vous devant le cinéma vers huit heures", "Le bébé s'est enfin endormi après le déjeuner",
        "Notre professeur nous a donné trop de devoirs cette semaine", "Tournez à gauche au feu puis continuez",
        "Le café est encore trop chaud pour le boire", "Elle promène toujours le chien avant le petit déjeuner",
    ],
    "de": [
        "Heute Nachmittag wird es regnen", "Kannst du mir bitte das Salz geben",
        "Ich habe gestern meinen Regenschirm im Büro vergessen", "Der Arzt sagt, ich soll mehr Wasser trinken",
        "Nächsten Sommer fahren wir in die Berge", "Ihr Bruder arbeitet im Krankenhaus am Bahnhof",
        "Der Bus kam heute Morgen wieder zu spät", "Weißt du, wo ich meine Schlüssel hingelegt habe",
        "Sie haben die Küche gelb gestrichen", "Meine Großmutter backt den besten Apfelkuchen",
        "Die Katze schläft auf dem warmen Sofa", "Auf dem Heimweg muss ich Milch und Eier kaufen",
        "Die Bibliothek schließt am Sonntag früh", "Er lernt seit einem Jahr Gitarre spielen",
        "Wir treffen uns um acht vor dem Kino", "Das Baby ist nach dem Mittagessen endlich eingeschlafen",
        "Unser Lehrer hat uns diese Woche zu viele Hausaufgaben gegeben", "Biegen Sie an der Ampel links ab",
        "Der Kaffee ist noch zu heiß zum Trinken", "Sie geht vor dem Frühstück immer mit dem Hund spazieren",
    ],
    "es": [
        "Va a llover esta tarde", "Me pasas la sal, por favor",
        "Ayer olvidé el paraguas dentro del coche", "El médico me dijo que bebiera más agua",
        "Este verano viajaremos hasta las montañas", "Su hermano trabaja cerca del hospital nuevo",
        "El autobús llegó tarde otra vez esta mañana", "Sabes dónde dejé mis llaves",
        "Pintaron la cocina de amarillo", "Mi abuela hace el mejor pastel de manzana",
        "Nuestro gato duerme sobre el sofá", "Tengo que comprar leche y huevos al volver a casa",
        "La biblioteca cierra temprano los domingos", "Está aprendiendo a tocar la guitarra",
        "Nos vemos delante del cine a las ocho", "El bebé por fin se durmió después de comer",
        "El profesor nos dio demasiados deberes esta semana", "Después del semáforo gira hacia la izquierda",
        "El café está demasiado caliente para beberlo", "Ella siempre pasea al perro antes del desayuno",
    ],
    "it": [
        "Questo pomeriggio pioverà di sicuro", "Mi passi il sale, per favore",
        "Ieri ho dimenticato l'ombrello in ufficio", "Il medico consiglia di bere più acqua",
        "La prossima estate andiamo in montagna", "Suo fratello lavora all'ospedale vicino alla stazione",
        "Stamattina l'autobus era di nuovo in ritardo", "Sai dove ho messo le chiavi",
        "Hanno dipinto la cucina di giallo", "Mia nonna fa la torta di mele più buona",
        "Il gatto dorme sul divano", "Tornando a casa devo comprare latte e uova",
        "La biblioteca chiude presto la domenica", "Sta imparando a suonare la chitarra",
        "Ci vediamo davanti al cinema alle otto", "Il bambino si è finalmente addormentato dopo pranzo",
        "Il professore ci ha dato troppi compiti questa settimana", "Al semaforo gira a sinistra",
        "Il caffè è ancora troppo caldo da bere", "Lei porta sempre fuori il cane prima di colazione",
    ],
    "pt": [
        "Vai chover hoje depois do almoço", "Você me passa o sal, por favor",
        "Ontem esqueci meu casaco no escritório", "O médico disse que devo beber mais água",
        "No próximo verão vamos para a praia", "O irmão dela trabalha no hospital perto da estação",
        "O ônibus atrasou de novo hoje de manhã", "Você sabe onde deixei as minhas chaves",
        "Eles pintaram a cozinha de amarelo", "Minha avó faz o melhor bolo de maçã",
        "O gato está dormindo no sofá", "Preciso comprar leite e ovos no caminho de casa",
        "A biblioteca fecha cedo aos domingos", "Ele está aprendendo a tocar violão",
        "Vamos nos encontrar na frente do cinema", "O bebê finalmente dormiu depois do almoço",
        "O professor passou muita lição de casa esta semana", "Vire na esquerda quando chegar no semáforo",
        "O café está quente demais para beber agora", "Ela sempre passeia com o cachorro antes do café",
    ],
}
